"""hypervisor.tasks."""
