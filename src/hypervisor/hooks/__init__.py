"""hypervisor.hooks."""
