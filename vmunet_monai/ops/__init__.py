"""Selective-scan operators and their backends (``reference``, ``torch``, ``cpu``, ``mamba_ssm``, plug-ins)."""

from .backends import (
    ScanBackend,
    available_backends,
    get_backend,
    list_backends,
    register_backend,
    resolve_backend_name,
    selective_scan_fn,
)

__all__ = [
    "ScanBackend",
    "available_backends",
    "get_backend",
    "list_backends",
    "register_backend",
    "resolve_backend_name",
    "selective_scan_fn",
]
