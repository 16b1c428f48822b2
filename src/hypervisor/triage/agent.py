"""The built-in triage as a supervised worker process: `python -m hypervisor.triage.agent` triages the one task the
supervisor claimed for it (HYPERVISOR_TASK_ID + HYPERVISOR_CLAIM_TOKEN), then closes or releases it."""

from __future__ import annotations

import os
import sys

from ..claims import workers
from ..core.config import load_config, resolve_task_root
from ..core.errors import HypervisorError, storage_error


def main() -> int:
    from ..claims.queue import TaskQueue
    from ..tasks.store import TaskStore
    from .triage import TriageRules, triage_claimed

    supervised = workers.supervised_claim(os.environ)
    if supervised is None:
        print("hypervisor triage agent: start me through `hypervisor run --agent triage` "
              f"(needs {workers.ENV_TASK_ID} and {workers.ENV_CLAIM_TOKEN})", file=sys.stderr)  # fmt: skip
        return 2
    task_id, token = supervised
    try:
        config = load_config()
        queue = TaskQueue(TaskStore(resolve_task_root(None, config)), config)
        result = triage_claimed(queue, TriageRules.load(config.triage_rules), {"id": task_id, "claim_token": token})
    except HypervisorError as error:
        print(f"hypervisor triage agent: {task_id}: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # a full, read-only or failing disk: one line; the supervisor gives the claim back
        print(f"hypervisor triage agent: {task_id}: {storage_error(error)}", file=sys.stderr)
        return 1
    detail = f" ({result['detail']})" if result.get("detail") else ""
    print(f"{task_id}: {result['action']}{detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
