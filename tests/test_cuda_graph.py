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


def test_autocast_cast_parameters_of_vmunet():
    from vmunet_monai.networks import autocast_cast_parameters

    net = VMUNet(scan_backend="torch")  # the paper network: 15 VSS blocks
    found = autocast_cast_parameters(net)
    # per SS2D: in_proj.weight, conv2d.weight / .bias, out_proj.weight and the two projections (90); patch
    # embedding conv (2), merging reductions (3), expansions (3 + 1), final 1x1 conv (2)
    assert len(found) == 101
    assert "layers.0.blocks.0.self_attention.x_proj_weight" in found and "final_conv.bias" in found
    assert not [n for n in found if any(k in n for k in ("norm", "ln_1", "A_logs", "Ds", "dt_projs_bias"))]
    assert all(found[n] is p for n, p in net.named_parameters() if n in found)


def test_precast_forward_is_autocast_forward_on_cpu():
    # the mechanics on CPU autocast (bf16 Linear / conv there too): same output bit for bit, and weights changed
    # in place after the copies were made are seen by the next call
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.GELU(), torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 5))
    graphed = CUDAGraphModule(net)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        forward, buffers = graphed._forward_fn("cpu")
        assert len(buffers) == 4 and all(b.dtype == torch.bfloat16 for b in buffers)
        assert torch.equal(forward(x), net(x))
        net[3].weight.mul_(2.0)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # a new region: autocast's cast cache is empty
        assert torch.equal(forward(x), net(x))
    with torch.no_grad():
        assert graphed._forward_fn("cpu")[0] is net  # no autocast: the network itself
    assert CUDAGraphModule(net, precast_weights=False)._forward_fn("cpu")[0] is net


@cuda
def test_precast_replay_is_bitwise_autocast_forward():
    net = _net("auto", "cuda")
    x = torch.randn(2, 3, 64, 64, device="cuda")
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        eager = net(x)
        precast = CUDAGraphModule(net)(x)
        plain = CUDAGraphModule(net, precast_weights=False)(x)
    assert torch.equal(precast, eager) and torch.equal(plain, eager)
