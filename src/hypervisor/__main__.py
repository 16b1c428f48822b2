"""`python -m hypervisor` runs the CLI."""

from .frontends.cli_entry import main

main()
