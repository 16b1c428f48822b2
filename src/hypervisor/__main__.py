"""`python -m hypervisor` runs the CLI."""

from .cli import main

main()
