"""bench/scale.py runs end to end on tiny stores (so the script cannot rot): every row it was asked for is in its
JSON report, its checks hold, and the cached stores it claimed from are put back as generated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SIZES = (20, 60)


def test_scale_quick_reports_every_row_and_puts_the_stores_back(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    argv = [sys.executable, str(REPO / "bench" / "scale.py"), "--quick", "--only", "index,list,claim,fsync",
            "--sizes", ",".join(map(str, SIZES)), "--rounds", "1", "--locations", "disk", "--disk-dir", str(cache),
            "--json"]  # fmt: skip
    env = {key: value for key, value in os.environ.items() if not key.startswith("HYPERVISOR_")}
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)  # --json: the report alone on stdout, the table on stderr
    assert "1. index build" in done.stderr and "5. claims/s of 16 processes" in done.stderr, done.stderr[-3000:]

    assert [(row["location"], row["size"]) for row in report["index"]] == [("disk", size) for size in SIZES]
    assert all(row["listed_ok"] and row["wall_s"] > 0 and row["cpu_s"] > 0 for row in report["index"])

    (warm,) = report["warm"]
    assert warm["mismatches"] == [] and warm["claims_unique"], warm
    assert sorted(warm["median_s"]) == sorted(map(str, SIZES))
    for kind in ("claim_cli", "claim_inproc", "list_cli", "list_inproc"):
        assert warm["goals"][kind]["growth"] > 0 and isinstance(warm["goals"][kind]["met"], bool)

    (fsync,) = report["fsync"]
    assert fsync["fsync_per_s"] > 0 and fsync["claims"] > 0 and fsync["exactly_once"], fsync
    assert fsync["fstype"] not in ("", "?")

    assert report["verdicts"] and all(isinstance(met, bool) for met in report["verdicts"].values())
    assert report["foreign_load"] >= 0 and len(report["src_sha256"]) == 12

    for size in SIZES:  # the claims were put back: the marker is there again, no state folder, every file active
        base = cache / f"scale-{size}"
        assert json.loads((base / "generated.json").read_text())["size"] == size
        assert not (base / "tasks" / ".hypervisor").exists()
        texts = [path.read_text() for path in (base / "tasks").rglob("*.md")]
        assert len(texts) == size and not any("in_progress" in text or "claimed" in text for text in texts)
