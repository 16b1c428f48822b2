"""hypervisor.frontends."""
