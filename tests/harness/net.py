"""Loopback helpers (shared with the demo)."""

from services.common.net import free_port, wait_until

__all__ = ["free_port", "wait_until"]
