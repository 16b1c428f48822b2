"""What the commands an agent loops on do, without click: claim, renew, release, complete, block and show.

Each takes the Context, `echo` (writes its text to stdout as it is, flushed), `as_json` and the command's values.
The click commands (cli_claims, cli_tasks) call them with click.echo; cli_fast calls them straight from argv.
"""

from __future__ import annotations

from ..core.timeutil import parse_duration
from .cli_context import Context, json_text

TYPE_CHECKING = False  # typing costs the hot commands 2 ms to import; annotations are never evaluated
if TYPE_CHECKING:
    from collections.abc import Callable

    Echo = Callable[[str], None]


def claim(
    ctx: Context, echo: Echo, as_json: bool, task_id: str | None, caller: str, lease: str | None, project: str | None
) -> None:
    lease_seconds = parse_duration(lease, "--lease") if lease else None
    result = ctx.queue.claim_next(caller, task_id=task_id, project=project, lease_seconds=lease_seconds)
    if as_json:
        echo(json_text(result))
        return
    from ..claims.attempts import counted

    echo(
        f"claimed {result['id']} ({counted(result['attempts'], result['max_attempts'])}; lease until "
        f"{result['lease_expires_at']})\n" + _taken_over(result) + f"token: {result['claim_token']}\n"
    )


def _taken_over(result: dict) -> str:
    """The line a takeover claim adds: from whom, and since when that holder's lease had run out."""
    previous = result.get("reclaimed_from")
    if previous is None:
        return ""
    expired = result.get("reclaimed_lease_expired_at")
    if expired is None:  # a stranded task: its file said in_progress, and no claim held it
        return f"taken over from {previous}: it was in_progress with no live claim (stranded)\n"
    from ..core.timeutil import humanize, now, parse_iso

    return f"taken over from {previous}, whose lease expired {humanize(now() - parse_iso(expired))} ago\n"


def renew(
    ctx: Context, echo: Echo, as_json: bool, task_id: str, token: str | None, caller: str | None, lease: str | None
) -> None:
    lease_seconds = parse_duration(lease, "--lease") if lease else None
    result = ctx.queue.renew(task_id, token=token, caller=caller, lease_seconds=lease_seconds)
    echo(json_text(result) if as_json else f"renewed {task_id} until {result['lease_expires_at']}\n")


def release(
    ctx: Context, echo: Echo, as_json: bool, task_id: str, token: str | None, caller: str | None, reason: str | None
) -> None:
    result = ctx.queue.release(task_id, token=token, caller=caller, reason=reason)
    if as_json:
        echo(json_text(result))
        return
    from ..claims.attempts import counted

    echo(f"released {task_id} (now {result['status']}; {counted(result['attempts'], result['max_attempts'])})\n")


def complete(
    ctx: Context,
    echo: Echo,
    as_json: bool,
    task_id: str,
    token: str | None,
    caller: str | None,
    summary: str,
    commit: str | None,
) -> None:
    result = ctx.queue.complete(task_id, token=token, caller=caller, summary=summary, commit=commit)
    echo(json_text(result) if as_json else f"completed {task_id}\n")


def block(
    ctx: Context, echo: Echo, as_json: bool, task_id: str, token: str | None, caller: str | None, reason: str
) -> None:
    result = ctx.queue.block(task_id, token=token, caller=caller, reason=reason)
    echo(json_text(result) if as_json else f"blocked {task_id}\n")


def show(ctx: Context, echo: Echo, as_json: bool, task_id: str) -> None:
    summary = ctx.store.find(task_id)
    from ..claims import views

    claim_view = views.claim_view(ctx.queue, task_id)
    if as_json:
        fresh, doc = ctx.store.read(summary)
        echo(json_text({**fresh, "claim": claim_view, "frontmatter": doc.data, "body": doc.body}))
        return
    path = ctx.store.path_of(summary)
    with open(path, encoding="utf-8") as handle:
        echo(f"# {path}\n")
        if summary.get("status_missing"):
            from ..tasks.task import status_missing_note

            echo(f"# {status_missing_note(task_id)}\n")
        if claim_view:
            state = "live" if claim_view["live"] else "expired"
            echo(f"# claim: {claim_view['caller']} ({state}, lease until {claim_view['lease_expires_at']})\n")
        echo(handle.read())
