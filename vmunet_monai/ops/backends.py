"""Selective-scan backend registry, the ``auto`` choice, and the public :func:`selective_scan_fn`.

A backend is registered by name with an availability check::

    from vmunet_monai.ops.backends import register_backend
    register_backend("mine", my_scan_fn, is_available=lambda x: x.is_cuda, priority={"cuda": 25})

``my_scan_fn`` takes the :func:`selective_scan_fn` arguments (without ``backend``). ``priority`` maps a device type
to a rank: ``auto`` picks the available backend with the highest rank for the tensor's device; a backend with no
rank for a device is never chosen by ``auto`` there (but can still be asked for by name).

Built in: ``reference`` (sequential, for tests; never chosen by ``auto``), ``torch`` (any device), ``cpu`` (our C
kernel, CPU only, when a C compiler is found), ``mamba_ssm`` (CUDA, when mamba_ssm imports).

Hook for fused SS2D backends (the ``triton`` backend): a backend may register ``fn=None`` with
``fused_core=<callable or "module:function">`` when it replaces the whole SS2D core rather than only the scan;
``selective_scan_fn(backend=...)`` then refuses it with a clear message, while :func:`resolve_backend_name`
(used by ``vmunet_monai.ops.ss2d``) may still choose it for ``auto``. Modules listed in :data:`PLUGIN_MODULES`
are imported (errors ignored, logged at debug level) the first time a backend is looked up for a CUDA tensor,
or when an unknown name is asked for, so that their top-level ``register_backend(...)`` call runs:
``vmunet_monai/ops/ss2d_triton.py`` should call ``register_backend("triton", ..., is_available=...,
priority={"cuda": 30})`` at import time and must import on a machine without CUDA.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import logging
from typing import Callable, Mapping, Union

import torch

__all__ = [
    "ScanBackend",
    "register_backend",
    "get_backend",
    "list_backends",
    "available_backends",
    "resolve_backend_name",
    "selective_scan_fn",
    "PLUGIN_MODULES",
]

logger = logging.getLogger("vmunet_monai")

ScanFn = Callable[..., Union[torch.Tensor, tuple]]

# modules that register further backends when imported (see the module docstring)
PLUGIN_MODULES: list[str] = ["vmunet_monai.ops.ss2d_triton"]


@dataclasses.dataclass
class ScanBackend:
    """One registered selective-scan backend.

    Attributes:
        name: the name users pass as ``backend=``.
        fn: a function with :func:`selective_scan_fn`'s arguments, a lazy ``"module:function"`` string, or None for
            a backend that only provides a fused SS2D core.
        is_available: ``is_available(x)`` -> whether the backend can run on tensor ``x`` (its device, dtype).
        priority: device type -> rank for ``auto`` (higher wins); devices not listed are never ``auto`` picks.
        description: one line shown in error messages and ``list_backends()``.
        fused_core: optional fused SS2D core (callable or ``"module:function"``), used by ``vmunet_monai.ops.ss2d``.
        unavailable_reason: optional ``reason(x)`` -> why ``is_available(x)`` is False, for error messages.
    """

    name: str
    fn: ScanFn | str | None
    is_available: Callable[[torch.Tensor], bool]
    priority: Mapping[str, int] = dataclasses.field(default_factory=dict)
    description: str = ""
    fused_core: Callable | str | None = None
    unavailable_reason: Callable[[torch.Tensor], str] | None = None

    def scan_function(self) -> ScanFn:
        """The scan callable (importing it if it was registered lazily)."""
        if self.fn is None:
            raise ValueError(
                f"selective-scan backend {self.name!r} fuses the whole SS2D core and has no stand-alone selective "
                f"scan; use it through vmunet_monai.ops.ss2d.ss2d_core (or the network's scan_backend), or pick "
                f"one of {scan_backend_names()} for selective_scan_fn."
            )
        if isinstance(self.fn, str):
            self.fn = _import_target(self.fn)
        return self.fn

    def available(self, x: torch.Tensor) -> bool:
        """``is_available(x)``, treating an exception in the check as 'not available'."""
        try:
            return bool(self.is_available(x))
        except Exception as err:  # an availability probe must never break the caller
            logger.debug("availability check of backend %r failed: %s", self.name, err)
            return False

    def reason(self, x: torch.Tensor) -> str:
        """Why this backend cannot run on ``x``."""
        if self.unavailable_reason is not None:
            try:
                return self.unavailable_reason(x)
            except Exception as err:
                return f"availability check failed: {err}"
        return f"not available for {x.device.type} tensors of dtype {x.dtype} on this machine"


_REGISTRY: dict[str, ScanBackend] = {}
_plugins_loaded = False
_logged_auto_choices: set[tuple[str, str]] = set()


def _import_target(target: str):
    module_name, attr = target.split(":")
    return getattr(importlib.import_module(module_name), attr)


def register_backend(
    name: str,
    fn: ScanFn | str | None,
    is_available: Callable[[torch.Tensor], bool],
    priority: Mapping[str, int] | None = None,
    description: str = "",
    fused_core: Callable | str | None = None,
    unavailable_reason: Callable[[torch.Tensor], str] | None = None,
) -> ScanBackend:
    """Register (or replace) the backend ``name``.

    Args:
        name: backend name; ``"auto"`` is reserved.
        fn: scan function with :func:`selective_scan_fn`'s arguments (minus ``backend``), a ``"module:function"``
            string imported on first use, or None for a fused-core-only backend.
        is_available: ``is_available(x)`` -> True when the backend can run on tensor ``x``.
        priority: device type -> rank used by ``auto`` (e.g. ``{"cuda": 30}``).
        description: one line for messages.
        fused_core: optional fused SS2D core (callable or ``"module:function"``).
        unavailable_reason: optional ``reason(x)`` for error messages.

    Returns:
        The registered :class:`ScanBackend`.

    Example::

        >>> register_backend("torch_copy", "vmunet_monai.ops.selective_scan_torch:selective_scan_torch",
        ...                  is_available=lambda x: True)  # doctest: +ELLIPSIS
        ScanBackend(name='torch_copy', ...)
    """
    if name == "auto":
        raise ValueError("'auto' is reserved and cannot be registered as a backend name.")
    backend = ScanBackend(
        name=name,
        fn=fn,
        is_available=is_available,
        priority=dict(priority or {}),
        description=description,
        fused_core=fused_core,
        unavailable_reason=unavailable_reason,
    )
    _REGISTRY[name] = backend
    return backend


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for module_name in PLUGIN_MODULES:
        try:
            if importlib.util.find_spec(module_name) is None:
                continue
            importlib.import_module(module_name)
        except Exception as err:  # a broken optional backend must not break the others
            logger.debug("optional backend module %s not loaded: %s", module_name, err)


def list_backends() -> list[str]:
    """Names of all registered backends (available or not), plus ``"auto"``."""
    return ["auto"] + sorted(_REGISTRY)


def scan_backend_names() -> list[str]:
    """Names usable with :func:`selective_scan_fn` (registered with a scan function), plus ``"auto"``."""
    return ["auto"] + sorted(name for name, b in _REGISTRY.items() if b.fn is not None)


def available_backends(x: torch.Tensor) -> list[str]:
    """Registered backends that can run on ``x``, best ``auto`` rank first."""
    if x.device.type != "cpu":
        _load_plugins()
    device = x.device.type
    names = [name for name, b in _REGISTRY.items() if b.available(x)]
    return sorted(names, key=lambda n: -_REGISTRY[n].priority.get(device, -1))


def get_backend(name: str) -> ScanBackend:
    """The registered backend ``name``; an unknown name gets an error listing the choices."""
    if name not in _REGISTRY:
        _load_plugins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown selective-scan backend {name!r}; choose one of {list_backends()}.")
    return _REGISTRY[name]


def resolve_backend_name(backend: str, x: torch.Tensor, scan_only: bool = False) -> str:
    """The concrete backend name that ``backend`` means for tensor ``x``.

    ``auto`` becomes the available backend with the highest rank for ``x``'s device (logged once per device and
    choice on the ``vmunet_monai`` logger); with ``scan_only`` fused-core-only backends are skipped. A named
    backend is checked: unknown or unavailable names raise ``ValueError``/``RuntimeError`` listing the choices.

    Example::

        >>> resolve_backend_name("auto", torch.zeros(1))  # doctest: +SKIP
        'cpu'
    """
    if backend != "auto":
        chosen = get_backend(backend)
        if not chosen.available(x):
            raise RuntimeError(
                f"selective-scan backend {backend!r} is not available: {chosen.reason(x)}. "
                f"Available here: {available_backends(x)}; or use 'auto'."
            )
        return backend
    device = x.device.type
    if device != "cpu":
        _load_plugins()
    candidates = [
        b
        for b in _REGISTRY.values()
        if device in b.priority and (b.fn is not None or not scan_only) and b.available(x)
    ]
    if not candidates:
        raise RuntimeError(
            f"no selective-scan backend is available for {device} tensors (registered: {list_backends()})."
        )
    best = max(candidates, key=lambda b: b.priority[device])
    key = (device, best.name)
    if key not in _logged_auto_choices:
        _logged_auto_choices.add(key)
        logger.info(
            "selective scan: backend 'auto' uses %r for %s tensors (available: %s)",
            best.name,
            device,
            ", ".join(b.name for b in sorted(candidates, key=lambda b: -b.priority[device])),
        )
    return best.name


def _check_shapes(u, delta, A, B, C, D, z, delta_bias) -> None:
    """Raise ``ValueError`` naming the argument and the expected shape when the inputs do not fit together."""
    if u.dim() != 3:
        raise ValueError(f"u must be (batch, channels, L), got shape {tuple(u.shape)}.")
    batch, channels, length = u.shape
    if delta.shape != u.shape:
        raise ValueError(f"delta must have u's shape {tuple(u.shape)}, got {tuple(delta.shape)}.")
    if A.dim() != 2 or A.shape[0] != channels:
        raise ValueError(f"A must be (channels={channels}, N), got shape {tuple(A.shape)}.")
    n_state = A.shape[1]
    groups = None
    for name, t in (("B", B), ("C", C)):
        if t.dim() == 3:
            expected, g = (batch, n_state, length), 1
        elif t.dim() == 4:
            expected, g = (batch, t.shape[1], n_state, length), t.shape[1]
        else:
            raise ValueError(
                f"{name} must be (batch, G, N, L) or (batch, N, L) = (batch={batch}, [G,] N={n_state}, L={length}), "
                f"got shape {tuple(t.shape)}."
            )
        if tuple(t.shape) != expected:
            raise ValueError(
                f"{name} must be (batch, G, N, L) or (batch, N, L) = (batch={batch}, [G,] N={n_state}, L={length}), "
                f"got shape {tuple(t.shape)}."
            )
        if g == 0 or channels % g != 0:
            raise ValueError(f"{name} has {g} groups, which does not divide the {channels} channels of u.")
        if groups is not None and g != groups:
            raise ValueError(f"B and C must have the same number of groups, got {groups} and {g}.")
        groups = g
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (channels,):
            raise ValueError(f"{name} must be (channels={channels},), got shape {tuple(t.shape)}.")
    if z is not None and z.shape != u.shape:
        raise ValueError(f"z must have u's shape {tuple(u.shape)}, got {tuple(z.shape)}.")
    if u.is_complex() or A.is_complex():
        raise ValueError("complex selective scans are not supported (VM-UNet uses real A, B, C).")


def selective_scan_fn(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    backend: str = "auto",
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Selective scan (Mamba S6) with mamba_ssm's argument layout and a choice of backend.

    Per channel ``c = g*D + d`` (group ``g``), with ``dt = softplus(delta + delta_bias)`` when ``delta_softplus``
    (else ``delta + delta_bias``) and ``h_0 = 0``::

        h_t = exp(dt_t * A_c) * h_{t-1} + dt_t * B_{g,t} * u_t
        y_t = <C_{g,t}, h_t> + D_c * u_t;   out = y * silu(z) when z is given

    Args:
        u: ``(batch, G*D, L)`` input.
        delta: ``(batch, G*D, L)`` time steps (before bias/softplus).
        A: ``(G*D, N)`` state matrix diagonal (negative for a stable scan).
        B: ``(batch, G, N, L)`` grouped input projection, or ``(batch, N, L)`` (one group).
        C: ``(batch, G, N, L)`` or ``(batch, N, L)`` output projection.
        D: optional ``(G*D,)`` skip weight.
        z: optional ``(batch, G*D, L)`` gate; the output is multiplied by ``silu(z)``.
        delta_bias: optional ``(G*D,)`` added to ``delta``.
        delta_softplus: apply softplus to ``delta + delta_bias``.
        return_last_state: also return the final state ``(batch, G*D, N)`` (not differentiated, as in mamba_ssm).
        backend: ``"auto"`` (fastest available for ``u``'s device, logged once), ``"torch"``, ``"cpu"``,
            ``"reference"``, ``"mamba_ssm"``, or another registered name (:func:`list_backends`).

    Returns:
        ``out (batch, G*D, L)`` in ``u``'s dtype (the computation runs in float32, float64 for float64 input), and
        the last state when ``return_last_state``.

    Raises:
        ValueError: unknown backend name or inconsistent shapes (the message names the argument).
        RuntimeError: the named backend cannot run here (e.g. ``mamba_ssm`` on a CPU tensor); lists what can.

    Example::

        >>> u = torch.randn(1, 8, 16); delta = torch.randn(1, 8, 16)
        >>> A = -torch.rand(8, 4); B = torch.randn(1, 2, 4, 16); C = torch.randn(1, 2, 4, 16)
        >>> selective_scan_fn(u, delta, A, B, C, D=torch.ones(8), delta_softplus=True, backend="torch").shape
        torch.Size([1, 8, 16])
    """
    if z is None and not return_last_state and _compiling() and not _needs_grad(u, delta, A, B, C, D, delta_bias):
        # compiled inference: one opaque custom op (the backends' buffers, ctypes calls and extensions would
        # break the graph); it validates and dispatches exactly as below when it runs (scan_custom_op.py)
        op = _scan_custom_op.selective_scan_op()
        if op is not None:
            return op(u, delta, A, B, C, D, delta_bias, bool(delta_softplus), backend)
    if not isinstance(backend, str):
        raise ValueError(f"backend must be a name (one of {list_backends()}), got {type(backend).__name__}.")
    if backend != "auto":
        get_backend(backend)  # unknown names fail before the shape checks
    _check_shapes(u, delta, A, B, C, D, z, delta_bias)
    name = resolve_backend_name(backend, u, scan_only=True)
    fn = get_backend(name).scan_function()
    return fn(
        u,
        delta,
        A,
        B,
        C,
        D=D,
        z=z,
        delta_bias=delta_bias,
        delta_softplus=delta_softplus,
        return_last_state=return_last_state,
    )


def _compiling() -> bool:
    """torch.compile is tracing (not torch.export: exported programs keep the traceable scan, e.g. for ONNX)."""
    compiler = getattr(torch, "compiler", None)
    is_compiling = getattr(compiler, "is_compiling", None)
    if is_compiling is None or not is_compiling():
        return False
    # the flag torch.export sets, read directly: Dynamo answers torch.compiler.is_exporting() with True under every
    # torch.compile up to torch 2.12 (measured with torch 2.11 on the GPU machine; read from the flag since 2.13)
    flag = getattr(compiler, "_is_exporting_flag", None)
    if flag is None:
        is_exporting = getattr(compiler, "is_exporting", None)
        flag = is_exporting is not None and is_exporting()
    return not flag


def _needs_grad(*tensors: torch.Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _always(x: torch.Tensor) -> bool:
    return True


def _cpu_available(x: torch.Tensor) -> bool:
    if x.device.type != "cpu":
        return False
    from vmunet_monai.ops.selective_scan_cpu import cpu_kernel_available

    return cpu_kernel_available(x)


def _cpu_reason(x: torch.Tensor) -> str:
    from vmunet_monai.ops.selective_scan_cpu import cpu_kernel_unavailable_reason

    return cpu_kernel_unavailable_reason(x)


def _register_builtin() -> None:
    from vmunet_monai.ops import selective_scan_mamba

    register_backend(
        "reference",
        "vmunet_monai.ops.selective_scan_ref:selective_scan_reference",
        is_available=_always,
        priority={},
        description="sequential recurrence, one Python step per time step (ground truth for tests; slow)",
    )
    register_backend(
        "torch",
        "vmunet_monai.ops.selective_scan_torch:selective_scan_torch",
        is_available=_always,
        priority={"cpu": 10, "cuda": 10, "mps": 10, "xpu": 10},
        description="vectorised pure PyTorch, time-blocked, hand-written backward (any device)",
    )
    register_backend(
        "export",
        "vmunet_monai.ops.export_scan:selective_scan_export",
        is_available=_always,
        priority={},
        description="one torch scan op (torch.export / ONNX Scan friendly; for export, never an auto pick)",
    )
    register_backend(
        "cpu",
        "vmunet_monai.ops.selective_scan_cpu:selective_scan_cpu",
        is_available=_cpu_available,
        priority={"cpu": 20},
        description="fused C kernel compiled on first use with the system C compiler (CPU tensors)",
        unavailable_reason=_cpu_reason,
    )
    register_backend(
        "mamba_ssm",
        selective_scan_mamba.selective_scan_mamba,
        is_available=selective_scan_mamba.mamba_ssm_available,
        priority={"cuda": 20},
        description="mamba_ssm's CUDA kernel (CUDA tensors, mamba_ssm installed)",
        unavailable_reason=selective_scan_mamba.unavailable_reason,
    )


_register_builtin()


from . import scan_custom_op as _scan_custom_op  # noqa: E402  (registers the op; needs this module)
