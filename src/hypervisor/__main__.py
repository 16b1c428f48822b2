"""`python -m hypervisor` runs the CLI."""

from .frontends.cli import main

main()
