"""hypervisor.supervisor."""
