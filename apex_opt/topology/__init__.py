"""The cluster as a graph of GPUs, switches, NICs and links, and the cost of a device group's collectives."""

from .graph import GroupLink, Topology

__all__ = ["GroupLink", "Topology"]
