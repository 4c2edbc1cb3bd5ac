"""``torch.compile`` of the whole network: compiled inference on CPU with ``fullgraph=True`` (issue 5, item 2).

The scan backends are not traceable (buffers written with ``out=``, a C kernel called through ctypes), so while
compiling without gradients :func:`selective_scan_fn` goes through the custom op ``vmunet_monai::selective_scan``
(``vmunet_monai/ops/scan_custom_op.py``). These tests compile the paper network on CPU (about 30-40 s on 2 cores).
"""

from __future__ import annotations

import pytest
import torch

from vmunet_monai.networks import VMUNet
from vmunet_monai.ops import selective_scan_fn
from vmunet_monai.ops.scan_custom_op import selective_scan_op

pytestmark = pytest.mark.skipif(selective_scan_op() is None, reason="torch.library.custom_op is not available")


def _scan_inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    b, groups, dm, n, length = 2, 2, 3, 4, 13
    return dict(
        u=torch.randn(b, groups * dm, length, generator=g),
        delta=0.5 * torch.randn(b, groups * dm, length, generator=g),
        A=-torch.rand(groups * dm, n, generator=g) - 0.1,
        B=torch.randn(b, groups, n, length, generator=g),
        C=torch.randn(b, groups, n, length, generator=g),
        D=torch.randn(groups * dm, generator=g),
        delta_bias=0.1 * torch.randn(groups * dm, generator=g),
    )


@pytest.mark.parametrize("backend", ["torch", "cpu", "auto"])
def test_custom_op_equals_the_backend(backend):
    """The op returns exactly what selective_scan_fn returns eagerly, and passes torch's operator checks."""
    if backend == "cpu":
        from vmunet_monai.ops.backends import get_backend

        if not get_backend("cpu").available(torch.zeros(1)):
            pytest.skip("no C compiler for the cpu backend")
    kw = _scan_inputs()
    args = (kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"], kw["D"], kw["delta_bias"], True, backend)
    want = selective_scan_fn(**kw, delta_softplus=True, backend=backend)
    got = torch.ops.vmunet_monai.selective_scan(*args)
    assert torch.equal(got, want)
    torch.library.opcheck(torch.ops.vmunet_monai.selective_scan.default, args,
                          test_utils=("test_schema", "test_faketensor"))
    # and without the optional tensors
    got = torch.ops.vmunet_monai.selective_scan(kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"], None, None, False,
                                                backend)
    assert torch.equal(got, selective_scan_fn(kw["u"], kw["delta"], kw["A"], kw["B"], kw["C"], backend=backend))


def test_compiled_network_inference_matches_eager_with_fullgraph():
    """torch.compile(fullgraph=True) of the paper network (scan backend 'auto': the C kernel or torch on CPU):
    no graph break, and the compiled logits equal the eager ones."""
    torch.manual_seed(0)
    net = VMUNet(spatial_dims=2, in_channels=3, out_channels=1).eval()
    x = torch.randn(1, 3, 32, 32)
    compiled = torch.compile(net, fullgraph=True)
    with torch.no_grad():
        want = net(x)
        got = compiled(x)
        again = compiled(x + 1)
        want_again = net(x + 1)
    scale = want.abs().max()
    assert ((got - want).abs().max() / scale).item() < 1e-5
    assert ((again - want_again).abs().max() / want_again.abs().max()).item() < 1e-5
