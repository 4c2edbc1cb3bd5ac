#!/usr/bin/env python
"""Train the paper VM-UNet for N steps with several scan backends from the same start and compare loss curves.

Same initial weights, same batches (seeded flips), same DropPath draws (seeded), AdamW 1e-3 / wd 1e-2, batch 32,
BCE+Dice on logits. A second run of the first backend measures run-to-run noise (atomics in backward kernels
make runs differ even with equal seeds), so "agree within noise" has a number to compare against.

    python scripts/compare_backend_training.py --data_dir /path/ISIC2017 --backends triton mamba_ssm --steps 200 \
        --amp bf16 --json curves.json

``--data_dir`` holds ISIC-2017_Training_Data/*.jpg and ISIC-2017_Training_Part1_GroundTruth/*_segmentation.png
(or images/ + masks/). Images are resized to 256x256 once and kept in memory.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vmunet_monai.data.isic_layout import find_isic_pairs
from vmunet_monai.losses import BceDiceLoss
from vmunet_monai.networks.nets import VMUNet


def load_pairs(data_dir: str, limit: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = find_isic_pairs(data_dir)
    items = [pair for split in pairs.pairs.values() for pair in split][:limit]
    images, masks = [], []
    for image_path, mask_path in items:
        img = np.asarray(Image.open(image_path).convert("RGB").resize((size, size), Image.BILINEAR), dtype=np.float32)
        # published intensity handling: per-image min-max to [0, 255]
        img = 255.0 * (img - img.min()) / max(float(img.max() - img.min()), 1e-6)
        msk = np.asarray(Image.open(mask_path).convert("L").resize((size, size), Image.NEAREST), dtype=np.float32) / 255.0
        images.append(torch.from_numpy(img).permute(2, 0, 1))
        masks.append(torch.from_numpy((msk > 0.5).astype(np.float32))[None])
    return torch.stack(images), torch.stack(masks)


def batches(num: int, steps: int, batch_size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, num, (batch_size,), generator=g)
        flips = torch.rand(2, generator=g) < 0.5
        yield idx, bool(flips[0]), bool(flips[1])


def train_curve(backend, init_state, images, masks, steps, batch_size, amp, seed, device) -> dict:
    torch.manual_seed(seed)
    net = VMUNet(scan_backend=backend).to(device)
    net.load_state_dict(init_state)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2)
    loss_fn = BceDiceLoss()
    losses = []
    torch.manual_seed(seed)  # same DropPath draws for every run
    start = time.perf_counter()
    for idx, hflip, vflip in batches(len(images), steps, batch_size, seed):
        x, y = images[idx].to(device, non_blocking=True), masks[idx].to(device, non_blocking=True)
        if hflip:
            x, y = x.flip(-1), y.flip(-1)
        if vflip:
            x, y = x.flip(-2), y.flip(-2)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp == "bf16"):
            loss = loss_fn(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {"backend": backend, "losses": losses, "seconds": seconds, "img_per_s": steps * batch_size / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--backends", nargs="+", default=["triton", "mamba_ssm"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--limit", type=int, default=600, help="images kept in memory")
    parser.add_argument("--amp", choices=["none", "bf16"], default="bf16")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    images, masks = load_pairs(args.data_dir, args.limit, 256)
    torch.manual_seed(args.seed)
    init_state = {k: v.clone() for k, v in VMUNet().state_dict().items()}
    runs = [train_curve(b, init_state, images, masks, args.steps, args.batch_size, args.amp, args.seed, device) for b in args.backends]
    # the same backend again: run-to-run noise
    runs.append(train_curve(args.backends[0], init_state, images, masks, args.steps, args.batch_size, args.amp, args.seed, device))
    runs[-1]["backend"] += " (repeat)"

    def mean_abs_diff(a, b, last=50):
        return float(np.mean(np.abs(np.array(a["losses"][-last:]) - np.array(b["losses"][-last:]))))

    report = {"steps": args.steps, "batch_size": args.batch_size, "amp": args.amp, "images": len(images), "runs": runs}
    report["noise_same_backend_last50"] = mean_abs_diff(runs[0], runs[-1])
    report["diff_between_backends_last50"] = {r["backend"]: mean_abs_diff(runs[0], r) for r in runs[1:-1]}
    print(f"{'backend':<22}{'img/s':>9}{'loss@1':>9}{'loss@50':>9}{'loss@end':>10}{'mean last 20':>14}")
    for r in runs:
        ls = r["losses"]
        print(f"{r['backend']:<22}{r['img_per_s']:9.1f}{ls[0]:9.4f}{ls[min(49, len(ls) - 1)]:9.4f}{ls[-1]:10.4f}{np.mean(ls[-20:]):14.4f}")
    print(f"mean |loss diff| over the last 50 steps: same backend twice {report['noise_same_backend_last50']:.4f}; "
          + ", ".join(f"{args.backends[0]} vs {k} {v:.4f}" for k, v in report["diff_between_backends_last50"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
