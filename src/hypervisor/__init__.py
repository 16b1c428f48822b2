"""hypervisor: many agents, one shared queue of markdown tasks, no task done twice."""

__version__ = "0.1.0"
