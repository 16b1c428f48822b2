"""hypervisor.claims."""
