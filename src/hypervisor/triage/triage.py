"""The built-in, model-free triage: closure detection, assignee allocation, and [[project]] links, from a rules file."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

import yaml

from ..core.errors import (
    ClaimRefused,
    ConfigError,
    HypervisorError,
    NothingToClaim,
    TaskNotFound,
    disk_failed,
    storage_error,
)
from ..core.rules import FINISHED_STATUSES, TRIAGED_REASON
from ..tasks.taskfile import TaskDoc

DEFAULT_RULES = os.path.join(os.path.dirname(__file__), "triage_rules.yaml")
KINDS = ("judgment", "automatable")


@dataclass
class TriageRules:
    """The editable triage rules (see triage_rules.yaml for their meaning)."""

    assignees: dict[str, str]
    tags: dict[str, set[str]]
    keywords: dict[str, list[str]]
    default: str = "judgment"
    close_headings: list[str] = field(default_factory=lambda: ["## Close Reason"])
    project_links: bool = True

    @classmethod
    def load(cls, path: str | None = None) -> TriageRules:
        """Rules from `path` (default: the built-in file); ConfigError naming the file, key and value."""
        path = path or DEFAULT_RULES
        try:
            with open(path, encoding="utf-8") as handle:
                data = yaml.safe_load(handle) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise ConfigError(f"{path}: cannot read triage rules: {error}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: triage rules must be a mapping")
        assignees = data.get("assignees") or {}
        if not isinstance(assignees, dict) or not all(isinstance(assignees.get(k), str) for k in KINDS):
            raise ConfigError(f"{path}: assignees: {assignees!r} must name a person for each of {', '.join(KINDS)}")
        default = data.get("default", "judgment")
        if default not in KINDS:
            raise ConfigError(f"{path}: default: {default!r} is not one of {', '.join(KINDS)}")
        tags, keywords = {}, {}
        for kind in KINDS:
            section = data.get(kind) or {}
            if not isinstance(section, dict):
                raise ConfigError(f"{path}: {kind}: must be a mapping with tags and keywords")
            for key, target in (("tags", tags), ("keywords", keywords)):
                values = section.get(key) or []
                if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                    raise ConfigError(f"{path}: {kind}.{key}: {values!r} must be a list of strings")
                target[kind] = [v.lower() for v in values]
        headings = data.get("close_headings", ["## Close Reason"])
        if not isinstance(headings, list) or not all(isinstance(h, str) for h in headings):
            raise ConfigError(f"{path}: close_headings: {headings!r} must be a list of strings")
        return cls(
            assignees=dict(assignees),
            tags={kind: set(values) for kind, values in tags.items()},
            keywords=keywords,
            default=default,
            close_headings=headings,
            project_links=bool(data.get("project_links", True)),
        )


@dataclass
class Verdict:
    """What triage decided for one task."""

    closed: bool
    close_reason: str | None
    kind: str
    assignee: str | None
    add_project_link: bool


def close_reason(body: str, headings: list[str]) -> str | None:
    """The text under the first close heading in `body` ('(no reason given)' if empty), or None."""
    lines = body.splitlines()
    for index, line in enumerate(lines):
        if line.strip() in headings:
            text = []
            for following in lines[index + 1 :]:
                if following.startswith("#"):
                    break
                text.append(following.strip())
            return " ".join(t for t in text if t) or "(no reason given)"
    return None


def classify(summary: dict, body: str, rules: TriageRules) -> str:
    """'judgment' or 'automatable': tag matches count double, keyword matches once."""
    text = f"{summary['title']}\n{body}".lower()
    tags = {tag.lower() for tag in summary["tags"]}
    score = {}
    for kind in KINDS:
        score[kind] = 2 * len(tags & rules.tags[kind]) + sum(
            1 for word in rules.keywords[kind] if re.search(r"\b" + re.escape(word) + r"\b", text)
        )
    if score["judgment"] == score["automatable"]:
        return rules.default
    return max(KINDS, key=score.__getitem__)


def decide(summary: dict, doc: TaskDoc, rules: TriageRules) -> Verdict:
    """Triage one task: closed (done, cancelled, or a close heading), else its kind and assignee."""
    reason = close_reason(doc.body, rules.close_headings)
    if summary["status"] in FINISHED_STATUSES and reason is None:
        reason = f"status is {summary['status']}"
    kind = classify(summary, doc.body, rules)
    project = summary["project"]
    link = bool(rules.project_links and project and f"[[{project}]]" not in doc.body and reason is None)
    return Verdict(
        closed=reason is not None,
        close_reason=reason,
        kind=kind,
        assignee=summary["assignee"] or rules.assignees[kind],
        add_project_link=link,
    )


def apply(verdict: Verdict, summary: dict, doc: TaskDoc) -> list[str]:
    """Write an open task's verdict into its document; returns what changed, for the report."""
    changes = []
    if doc.data.get("triage") != verdict.kind:
        doc.set("triage", verdict.kind)
        changes.append(f"triage={verdict.kind}")
    if verdict.add_project_link:
        doc.body = f"Project: [[{summary['project']}]]{doc.newline}{doc.newline}" + doc.body.lstrip("\r\n")
        changes.append(f"linked [[{summary['project']}]]")
    return changes


def triage_queue(queue, rules: TriageRules, caller: str = "triage", ids=None, project=None, limit=None,
                 dry_run: bool = False) -> dict:  # fmt: skip
    """Claim, triage and close or release each ready task of the batch; returns per-task actions and counts.

    A task whose files cannot be written (OSError) is given back and reported (`action` error, `errors` counted,
    `error` the first one-line message); a full, read-only or failing disk stops the batch there."""
    results = []
    counts = {"closed": 0, "triaged": 0, "skipped": 0}
    report: dict = {"tasks": results, "counts": counts}
    candidates = queue.ready(project=project, ids=ids)
    if limit:
        candidates = candidates[:limit]
    for summary in candidates:
        task_id = summary["id"]
        if dry_run:
            _, doc = queue.store.read(summary)
            verdict = decide(summary, doc, rules)
            action = "would close" if verdict.closed else f"would assign {verdict.assignee} ({verdict.kind})"
            results.append({"id": task_id, "action": action, "detail": verdict.close_reason})
            continue
        try:
            claim = queue.claim_next(caller, task_id=task_id)
            try:
                results.append(triage_claimed(queue, rules, claim))
            except BaseException as error:
                why = storage_error(error) if isinstance(error, OSError) else error
                give_back(queue, task_id, claim["claim_token"], f"triage failed: {why}")
                raise
        except (ClaimRefused, NothingToClaim, TaskNotFound) as error:
            counts["skipped"] += 1
            results.append({"id": task_id, "action": "skipped", "detail": str(error)})
            continue
        except OSError as error:
            message = str(storage_error(error))
            counts["errors"] = counts.get("errors", 0) + 1
            report.setdefault("error", message)
            results.append({"id": task_id, "action": "error", "detail": message})
            if disk_failed(error):
                break
            continue
        counts["closed" if results[-1]["action"] == "closed" else "triaged"] += 1
    return report


def give_back(queue, task_id: str, token: str, why: str, count_attempt: bool = False) -> None:
    """Release a claim whose work failed; if even the release cannot be written (a full or failing disk), abandon
    the claim (queue.abandon: rule 2 frees the task), so that none is left that nobody holds."""
    try:
        queue.release(task_id, token=token, reason=why, count_attempt=count_attempt)
    except HypervisorError:
        pass  # the claim is gone already: taken over, or ended by the outcome in its file
    except OSError:
        try:
            queue.abandon(task_id, token, why)
        except (HypervisorError, OSError):
            pass  # the disk refuses even that: the claim's lease frees the task


def triage_doc(view: dict, doc: TaskDoc, rules: TriageRules, attempts: int | None = None) -> tuple[Verdict, list[str]]:
    """Decide `view` (the task as it stood before any claim) and write the verdict into `doc`, in memory.

    An open task gets its kind and project link (its assignee is set when the claim is released); a closed one gets
    back the assignee it had before the claim, and `attempts` if given: triage's claims are bookkeeping. Returns
    (verdict, changes), the changes named against the task before the claim."""
    verdict = decide(view, doc, rules)
    if verdict.closed:
        if view["status"] in FINISHED_STATUSES:
            return verdict, []
        if view["assignee"] is None:
            doc.remove("assignee")
        else:
            doc.set("assignee", view["assignee"])
        if attempts is not None:
            doc.set("attempts", attempts)
        return verdict, ["status=done"]
    changes = apply(verdict, view, doc)
    if view["assignee"] != verdict.assignee:
        changes.insert(0, f"assignee={verdict.assignee}")
    return verdict, changes


def triage_claimed(queue, rules: TriageRules, claim: dict) -> dict:
    """Triage a task this caller has claimed, then complete it (closed) or release it as active with its assignee."""
    verdict, changes = triage_edit(queue, rules, claim["id"], claim["claim_token"])
    return triage_settle(queue, claim["id"], claim["claim_token"], verdict, changes)


def triage_edit(queue, rules: TriageRules, task_id: str, token: str, on_verdict=None) -> tuple[Verdict, list[str]]:
    """Write the verdict into a claimed task's file (see `triage_doc`); (verdict, changes).

    `on_verdict(verdict, changes)` runs under the task's lock before the file is written (the batch front records
    its result there)."""
    outcome: dict = {}

    def change(summary: dict, doc: TaskDoc, held) -> None:
        view = dict(summary, status=held.status_before, assignee=held.assignee_before)
        outcome["verdict"], outcome["changes"] = triage_doc(view, doc, rules, attempts=held.attempts - 1)
        if on_verdict is not None:
            on_verdict(outcome["verdict"], outcome["changes"])

    queue.edit(task_id, change, token=token)
    return outcome["verdict"], outcome["changes"]


def triage_settle(queue, task_id: str, token: str, verdict: Verdict, changes: list[str]) -> dict:
    """End triage's claim: complete a closed task (worker log, `completed`), release an open one as active with
    its assignee, without counting an attempt."""
    if verdict.closed:
        queue.complete(task_id, token=token, summary=f"closed by triage: {verdict.close_reason}")
        return {"id": task_id, "action": "closed", "detail": verdict.close_reason}
    detail = ", ".join([f"assignee={verdict.assignee}", *(c for c in changes if not c.startswith("assignee="))])
    queue.release(task_id, token=token, reason=f"{TRIAGED_REASON}: {detail}", status="active", assignee=verdict.assignee,
                  count_attempt=False)  # fmt: skip
    return {"id": task_id, "action": "triaged", "detail": detail}
