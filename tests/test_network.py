"""Known answers for the VM-UNet network: parameter counts, state-dict keys, shapes, input checks."""

from __future__ import annotations

import math

import pytest
import torch

from vmunet_monai.networks.nets import VMUNet


def published_vssm_keys(depths=(2, 2, 2, 2), depths_decoder=(2, 2, 2, 1), dims=(96, 192, 384, 768), num_classes=1):
    """The key -> shape table of the published VSSM (reference section 2.1), written from the spec."""
    keys = {
        "patch_embed.proj.weight": (dims[0], 3, 4, 4),
        "patch_embed.proj.bias": (dims[0],),
        "patch_embed.norm.weight": (dims[0],),
        "patch_embed.norm.bias": (dims[0],),
    }

    def block(prefix, c):
        d, r, n = 2 * c, math.ceil(c / 16), 16
        return {
            f"{prefix}.ln_1.weight": (c,),
            f"{prefix}.ln_1.bias": (c,),
            f"{prefix}.self_attention.x_proj_weight": (4, r + 2 * n, d),
            f"{prefix}.self_attention.dt_projs_weight": (4, d, r),
            f"{prefix}.self_attention.dt_projs_bias": (4, d),
            f"{prefix}.self_attention.A_logs": (4 * d, n),
            f"{prefix}.self_attention.Ds": (4 * d,),
            f"{prefix}.self_attention.in_proj.weight": (2 * d, c),
            f"{prefix}.self_attention.conv2d.weight": (d, 1, 3, 3),
            f"{prefix}.self_attention.conv2d.bias": (d,),
            f"{prefix}.self_attention.out_norm.weight": (d,),
            f"{prefix}.self_attention.out_norm.bias": (d,),
            f"{prefix}.self_attention.out_proj.weight": (c, d),
        }

    for i, (c, depth) in enumerate(zip(dims, depths)):
        for j in range(depth):
            keys.update(block(f"layers.{i}.blocks.{j}", c))
        if i < 3:
            keys[f"layers.{i}.downsample.reduction.weight"] = (2 * c, 4 * c)
            keys[f"layers.{i}.downsample.norm.weight"] = (4 * c,)
            keys[f"layers.{i}.downsample.norm.bias"] = (4 * c,)
    for k, (c, depth) in enumerate(zip(dims[::-1], depths_decoder)):
        for j in range(depth):
            keys.update(block(f"layers_up.{k}.blocks.{j}", c))
        if k > 0:
            keys[f"layers_up.{k}.upsample.expand.weight"] = (4 * c, 2 * c)
            keys[f"layers_up.{k}.upsample.norm.weight"] = (c,)
            keys[f"layers_up.{k}.upsample.norm.bias"] = (c,)
    keys["final_up.expand.weight"] = (4 * dims[0], dims[0])
    keys["final_up.norm.weight"] = (dims[0] // 4,)
    keys["final_up.norm.bias"] = (dims[0] // 4,)
    keys["final_conv.weight"] = (num_classes, dims[0] // 4, 1, 1)
    keys["final_conv.bias"] = (num_classes,)
    return keys


@pytest.mark.parametrize("num_classes, expected", [(1, 27_427_561), (9, 27_427_761)])
def test_parameter_count_matches_paper_model(num_classes, expected):
    net = VMUNet(out_channels=num_classes)
    assert sum(p.numel() for p in net.parameters()) == expected


def test_state_dict_keys_and_shapes_equal_published_vssm():
    net = VMUNet(out_channels=9)
    state = net.state_dict()
    expected = published_vssm_keys(num_classes=9)
    assert len(state) == 222
    assert set(state) == set(expected)
    for key, shape in expected.items():
        assert tuple(state[key].shape) == shape, key


def test_published_initialisation():
    torch.manual_seed(0)
    net = VMUNet()
    ss2d = net.layers[0].blocks[0].self_attention
    d, r, n = 192, 6, 16
    # A_logs: S4D-real log(1..N) on every row; Ds ones
    assert torch.allclose(ss2d.A_logs, torch.log(torch.arange(1, n + 1).float()).expand(4 * d, n))
    assert torch.equal(ss2d.Ds, torch.ones(4 * d))
    # softplus(dt bias) within [dt_min, dt_max] (floor 1e-4)
    dt = torch.nn.functional.softplus(ss2d.dt_projs_bias)
    assert dt.min() >= 1e-3 * 0.999 and dt.max() <= 0.1 * 1.001
    assert ss2d.dt_projs_weight.abs().max() <= r**-0.5
    # x_proj keeps the default Linear init U(+-1/sqrt(D)); Linear layers get trunc_normal(std .02) cut at +-2
    assert ss2d.x_proj_weight.abs().max() <= 1 / math.sqrt(d)
    w = ss2d.in_proj.weight
    assert w.abs().max() <= 2.0 and 0.015 < w.std() < 0.025
    assert torch.equal(net.layers[0].blocks[0].ln_1.weight, torch.ones(96))
    # drop-path schedule: encoder linspace(0, .2, 8); decoder reversed linspace(0, .2, 7)
    assert net.layers[3].blocks[1].drop_path.drop_prob == pytest.approx(0.2)
    assert net.layers_up[0].blocks[0].drop_path.drop_prob == pytest.approx(0.2)
    assert isinstance(net.layers_up[3].blocks[0].drop_path, torch.nn.Identity)


@pytest.mark.parametrize("size, num_classes", [(256, 1), (224, 9)])
def test_paper_model_output_shape(size, num_classes):
    net = VMUNet(out_channels=num_classes, scan_backend="torch").eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, size, size))
    assert out.shape == (1, num_classes, size, size)
    assert torch.isfinite(out).all()


def test_small_model_batch_and_grey_input(small_vmunet_kwargs):
    net = VMUNet(in_channels=1, out_channels=2, scan_backend="torch", **small_vmunet_kwargs).eval()
    x = torch.randn(2, 1, 64, 96)
    with torch.no_grad():
        out = net(x)
        # grey input is repeated to three channels, as in the published model
        out_rgb = net(x.repeat(1, 3, 1, 1))
    assert out.shape == (2, 2, 64, 96)
    assert torch.allclose(out, out_rgb)


def test_sigmoid_output_option(small_vmunet_kwargs):
    torch.manual_seed(0)
    logits_net = VMUNet(scan_backend="torch", **small_vmunet_kwargs).eval()
    prob_net = VMUNet(scan_backend="torch", sigmoid_output=True, **small_vmunet_kwargs).eval()
    prob_net.load_state_dict(logits_net.state_dict())
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(torch.sigmoid(logits_net(x)), prob_net(x))


@pytest.mark.parametrize("shape", [(1, 3, 250, 256), (1, 3, 32, 48 + 1), (3, 32, 32)])
def test_bad_input_sizes_are_clear_errors(shape, small_vmunet_kwargs):
    net = VMUNet(scan_backend="torch", **small_vmunet_kwargs)
    with pytest.raises(ValueError, match="multiples of 32|expects a"):
        net(torch.randn(*shape))


def test_wrong_channel_count_and_3d_are_errors(small_vmunet_kwargs):
    net = VMUNet(scan_backend="torch", **small_vmunet_kwargs)
    with pytest.raises(ValueError, match="input channels"):
        net(torch.randn(1, 4, 32, 32))
    with pytest.raises(NotImplementedError, match="slice"):
        VMUNet(spatial_dims=3)


def test_backends_agree_on_whole_network_float64(small_vmunet_kwargs):
    torch.manual_seed(0)
    net = VMUNet(out_channels=3, scan_backend="reference", **small_vmunet_kwargs).double().eval()
    x = torch.randn(1, 3, 32, 64, dtype=torch.float64)
    with torch.no_grad():
        ref = net(x)
        fast = net.set_scan_backend("torch")(x)
    assert net.scan_backend == "torch"
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)


def test_gradients_flow_to_every_parameter(small_vmunet_kwargs):
    torch.manual_seed(0)
    net = VMUNet(drop_path_rate=0.0, scan_backend="torch", **small_vmunet_kwargs)
    net(torch.randn(2, 3, 32, 32)).sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_metatensor_input(small_vmunet_kwargs):
    from monai.data import MetaTensor

    net = VMUNet(scan_backend="torch", **small_vmunet_kwargs).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = net(MetaTensor(x))
        assert torch.allclose(out, net(x))
