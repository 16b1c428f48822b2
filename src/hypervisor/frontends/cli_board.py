"""The `hypervisor board` command: the live web board of a task root (frontends/board/)."""

from __future__ import annotations

import click

from .cli import context_for, tasks_option


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to serve on; anything but loopback needs --token.")  # fmt: skip
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Port to serve on (0: a free one; the printed URL names it).")  # fmt: skip
@click.option("--token", metavar="T", envvar="HYPERVISOR_BOARD_TOKEN",
              help="A password every request must carry (?token=T once, then a cookie; or the header "
              "X-Hypervisor-Token). Needed for a --host other than loopback. Default: HYPERVISOR_BOARD_TOKEN.")  # fmt: skip
@tasks_option
def board(host, port, token, tasks) -> None:
    """Serve a live, read-only web page of the queue and the running batch.

    \b
    The queue as columns by status (ready, waiting on dependencies, in progress,
    blocked, review, done), filters by project and text; the live run: each
    worker, its task, attempt, elapsed time, last tool call and files edited,
    tokens so far; worker logs, events and the last runs' summaries. The page
    updates itself (server-sent events, with a poll as fallback). Nothing on it
    changes a task. GET /api/state returns what the page shows, as JSON.
    It prints its URL when it answers; `hypervisor run` prints it too. Ctrl-C
    stops it.

    \b
    Examples:
      hypervisor board                                  # http://127.0.0.1:8765/
      hypervisor board --host 0.0.0.0 --token s3cret-words --port 9000
    """
    from .board.serve import serve

    serve(context_for(tasks).queue, host, port, token)
