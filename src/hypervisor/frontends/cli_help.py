"""Records `hypervisor --help` into cli_help.txt: `python -m hypervisor.frontends.cli_help` (after changing a command);
in a checkout it rewrites docs/commands.md too (cli_docs), so one command keeps both up to date.

cli_entry prints that file for --help without importing click; tests/test_cli_entry.py fails when it differs from
click's own output for the group.
"""

from __future__ import annotations

import os

from .cli_entry import HELP_FILE, HELP_WIDTH


def click_help() -> str:
    """The group's --help as click prints it at HELP_WIDTH (a terminal of 80 columns or more, or no terminal)."""
    from .cli import cli

    with cli.make_context("hypervisor", [], resilient_parsing=True, terminal_width=HELP_WIDTH) as ctx:
        return ctx.get_help() + "\n"


def main() -> None:
    with open(HELP_FILE, "w", encoding="utf-8") as handle:
        handle.write(click_help())
    print(f"wrote {HELP_FILE}")
    from . import cli_docs

    if os.path.isdir(os.path.dirname(os.path.normpath(cli_docs.DOCS_FILE))):  # a checkout: the reference too
        cli_docs.main([])


if __name__ == "__main__":
    main()
