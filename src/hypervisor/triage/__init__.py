"""hypervisor.triage."""
