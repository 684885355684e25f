"""Workloads: arrival processes x length distributions, and real-trace readers, all producing RequestSpecs."""
from workloads.spec import RequestSpec

__all__ = ["RequestSpec"]
