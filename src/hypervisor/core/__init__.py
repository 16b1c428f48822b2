"""hypervisor.core."""
