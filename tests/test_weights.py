"""Pretrained-weight loading: VMamba-S v0 mapping counts, VM-UNet round trips, conversion, bad files."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from monai.handlers import CheckpointLoader

from tests.test_network import published_vssm_keys
from vmunet_monai.networks.nets import VMUNet
from vmunet_monai.weights import (
    WeightsError,
    convert_weights,
    load_checkpoint_file,
    load_vmamba_pretrained,
    load_vmunet_checkpoint,
)


def synthetic_vmamba_small_v0(seed: int = 0) -> dict:
    """A checkpoint with the VMamba-S v0 key layout: depths [2, 2, 27, 2], dims 96..768, ImageNet head (446 keys)."""
    g = torch.Generator().manual_seed(seed)
    table = published_vssm_keys(depths=(2, 2, 27, 2), depths_decoder=(0, 0, 0, 0))
    table = {k: v for k, v in table.items() if not k.startswith(("layers_up", "final_"))}
    table.update({"norm.weight": (768,), "norm.bias": (768,), "head.weight": (1000, 768), "head.bias": (1000,)})
    return {"model": {k: torch.randn(shape, generator=g) for k, shape in table.items()}}


def test_synthetic_checkpoint_has_446_keys():
    assert len(synthetic_vmamba_small_v0()["model"]) == 446


def test_vmamba_small_loads_117_encoder_91_decoder_14_random():
    ckpt = synthetic_vmamba_small_v0()
    net = VMUNet()
    report = load_vmamba_pretrained(net, ckpt)
    assert len(report.loaded_encoder) == 117
    assert len(report.loaded_decoder) == 91
    assert sorted(report.random) == sorted(
        [f"layers_up.{i}.upsample.{p}" for i in (1, 2, 3) for p in ("expand.weight", "norm.weight", "norm.bias")]
        + ["final_up.expand.weight", "final_up.norm.weight", "final_up.norm.bias", "final_conv.weight", "final_conv.bias"]
    )
    # every key the decoder mirrors is also an encoder key, so only the 117 encoder keys count as used
    assert len(report.skipped) == 446 - 117
    state, src = net.state_dict(), ckpt["model"]
    # encoder copies, decoder mirrors (layers.0 -> layers_up.3, layers.3 -> layers_up.0)
    assert torch.equal(state["layers.2.blocks.1.self_attention.A_logs"], src["layers.2.blocks.1.self_attention.A_logs"])
    assert torch.equal(state["layers_up.3.blocks.0.self_attention.x_proj_weight"], src["layers.0.blocks.0.self_attention.x_proj_weight"])
    assert torch.equal(state["layers_up.0.blocks.1.ln_1.weight"], src["layers.3.blocks.1.ln_1.weight"])
    assert torch.equal(state["layers_up.1.blocks.0.self_attention.in_proj.weight"], src["layers.2.blocks.0.self_attention.in_proj.weight"])


def test_decoder_skips_encoder_only_keys():
    report = load_vmamba_pretrained(VMUNet(), synthetic_vmamba_small_v0())
    # layers_up.3 has one block, so layers.0.blocks.1 feeds only the encoder; downsample/norm/head feed nothing
    assert "layers.0.blocks.1.ln_1.weight" in report.loaded_encoder
    assert not any(k.startswith("layers_up.3.blocks.1") for k in report.loaded_decoder)
    assert {"norm.weight", "head.weight", "layers.2.blocks.26.ln_1.weight"} <= set(report.skipped)


def test_shape_mismatch_names_the_keys():
    ckpt = synthetic_vmamba_small_v0()
    ckpt["model"]["patch_embed.proj.weight"] = torch.zeros(64, 3, 4, 4)
    with pytest.raises(WeightsError, match=r"patch_embed.proj.weight: checkpoint \(64, 3, 4, 4\) vs model \(96, 3, 4, 4\)"):
        load_vmamba_pretrained(VMUNet(), ckpt)
    report = load_vmamba_pretrained(VMUNet(), ckpt, strict_shapes=False)
    assert [k for k, _, _ in report.mismatched] == ["patch_embed.proj.weight"]


def test_vmamba_v2_checkpoint_is_explained():
    v2 = {"model": {"layers.0.blocks.0.op.in_proj.weight": torch.zeros(2), "layers.0.blocks.0.norm.weight": torch.zeros(2)}}
    with pytest.raises(WeightsError, match="VMamba v2"):
        load_vmamba_pretrained(VMUNet(), v2)


@pytest.mark.parametrize("wrap", ["plain", "vmunet_prefix", "module_prefix", "nested"])
def test_published_vmunet_checkpoint_round_trips_strictly(wrap, tmp_path):
    torch.manual_seed(1)
    src = VMUNet(out_channels=9)
    state = src.state_dict()
    if wrap == "vmunet_prefix":
        state = {f"vmunet.{k}": v for k, v in state.items()}
    elif wrap == "module_prefix":
        state = {f"module.vmunet.{k}": v for k, v in state.items()}
    elif wrap == "nested":
        state = {"epoch": 3, "model_state_dict": {f"vmunet.{k}": v for k, v in state.items()}, "loss": 0.5}
    path = tmp_path / "best.pth"
    torch.save(state, path)
    dst = VMUNet(out_channels=9)
    load_vmunet_checkpoint(dst, path)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k


def test_wrong_architecture_lists_missing_and_shapes(tmp_path):
    state = VMUNet(out_channels=1).state_dict()
    with pytest.raises(WeightsError, match="final_conv.weight: checkpoint \\(1, 24, 1, 1\\) vs model \\(9, 24, 1, 1\\)"):
        load_vmunet_checkpoint(VMUNet(out_channels=9), state)
    del state["layers.0.blocks.0.ln_1.weight"]
    with pytest.raises(WeightsError, match="1 missing keys"):
        load_vmunet_checkpoint(VMUNet(out_channels=1), state)


def test_not_a_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "notes.pth"
    bad.write_text("this is not a checkpoint")
    with pytest.raises(WeightsError, match="notes.pth is not a PyTorch checkpoint"):
        load_checkpoint_file(bad)
    with pytest.raises(WeightsError, match="does not exist"):
        load_checkpoint_file(tmp_path / "missing.pth")
    torch.save({"optimizer": {"lr": 1}}, tmp_path / "opt.pth")
    with pytest.raises(WeightsError, match="no state dict"):
        load_vmunet_checkpoint(VMUNet(), tmp_path / "opt.pth")


def test_convert_weights_output_loads_with_monai_checkpoint_loader(tmp_path):
    src = tmp_path / "vmamba_small_e238_ema.pth"
    torch.save(synthetic_vmamba_small_v0(), src)
    dst = tmp_path / "model.pt"
    summary = convert_weights(str(src), str(dst), out_channels=2, half=True)
    assert summary["kind"] == "vmamba"
    state = torch.load(dst, weights_only=True)
    assert len(state) == 222 and state["final_conv.weight"].dtype == torch.float16
    net = VMUNet(out_channels=2)

    from ignite.engine import Engine

    CheckpointLoader(load_path=str(dst), load_dict={"model": net}, map_location="cpu")(Engine(lambda e, b: None))
    assert torch.allclose(net.state_dict()["layers.0.blocks.0.self_attention.Ds"].float(), state["layers.0.blocks.0.self_attention.Ds"].float())


def test_convert_weights_cli(tmp_path):
    torch.manual_seed(2)
    src = tmp_path / "vmunet_best.pth"
    torch.save({"model_state_dict": {f"vmunet.{k}": v for k, v in VMUNet(out_channels=9).state_dict().items()}}, src)
    dst = tmp_path / "plain.pt"
    out = subprocess.run(
        [sys.executable, "-m", "vmunet_monai.cli", "convert_weights", str(src), str(dst)],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert "(vmunet)" in out.stdout
    assert torch.load(dst, weights_only=True)["final_conv.weight"].shape == (9, 24, 1, 1)
