"""CUDAGraphModule / CUDAGraphInferer: ordinary forward off CUDA; exact replay on CUDA (GPU tests skip on CPU)."""

from __future__ import annotations

import pytest
import torch
from monai.data import MetaTensor

from vmunet_monai.networks import CUDAGraphModule, VMUNet
from vmunet_monai.workflows.inferers import CUDAGraphInferer

TINY = dict(dims=(8, 16, 32, 64), depths=(1, 1, 1, 1), depths_decoder=(1, 1, 1, 1), d_state=4)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _net(backend: str = "torch", device: str = "cpu") -> VMUNet:
    torch.manual_seed(0)
    return VMUNet(scan_backend=backend, **TINY).to(device).eval()


def test_cpu_calls_are_ordinary_forwards():
    net = _net()
    graphed = CUDAGraphModule(net)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(graphed(x), net(x))
    assert graphed.num_graphs == 0
    out = graphed(x.requires_grad_())  # gradients flow through the wrapper
    out.sum().backward()
    assert x.grad is not None and graphed.num_graphs == 0


def test_inferer_on_cpu_matches_network():
    net = _net()
    x = MetaTensor(torch.randn(1, 3, 64, 64))
    with torch.no_grad():
        out = CUDAGraphInferer()(x, net)
        assert type(out) is torch.Tensor and torch.equal(out, net(x.as_tensor()))


def test_invalid_warmup():
    with pytest.raises(ValueError, match="warmup"):
        CUDAGraphModule(torch.nn.Identity(), warmup=0)


@cuda
@pytest.mark.parametrize("backend", ["triton", "torch", "mamba_ssm"])
def test_replay_matches_forward_on_cuda(backend):
    from vmunet_monai.ops import available_backends

    if backend not in available_backends(torch.zeros(1, device="cuda")):
        pytest.skip(f"{backend} not available")
    net = _net(backend, "cuda")
    graphed = CUDAGraphModule(net, max_graphs=2)
    xs = [torch.randn(b, 3, 64, 64, device="cuda") for b in (1, 1, 3)]
    with torch.inference_mode():
        for x in xs:
            torch.testing.assert_close(graphed(x), net(x), rtol=1e-5, atol=1e-5)
        assert graphed.num_graphs == 2  # batch 1 captured once, batch 3 once
        first = graphed(xs[0])
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(0.5)  # in-place weight changes are seen by the replay
        torch.testing.assert_close(graphed(xs[0]), net(xs[0]), rtol=1e-5, atol=1e-5)
        assert not torch.equal(first, graphed(xs[0]))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            torch.testing.assert_close(graphed(xs[2]).float(), net(xs[2]).float(), rtol=2e-2, atol=2e-2)
        assert graphed.num_graphs == 2  # the oldest signature was dropped for the autocast one
