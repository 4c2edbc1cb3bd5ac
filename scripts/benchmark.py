#!/usr/bin/env python
"""Benchmark VM-UNet scan backends: latency, throughput, training step, parameters, MACs, peak memory.

Examples::

    python scripts/benchmark.py --device cpu --json out/bench_cpu.json
    python scripts/benchmark.py --device cuda --dtype fp32,bf16 --json out/bench_h200.json
    vmunet-monai benchmark --device cpu --backends cpu,torch --train_batch_size 0
"""

from __future__ import annotations

import argparse
import json
import logging

from vmunet_monai.benchmark import benchmark


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:index]")
    parser.add_argument("--backends", default=None, help="comma-separated scan backends (default: all available)")
    parser.add_argument("--image-size", "--image_size", type=int, default=256)
    parser.add_argument("--batch-size", "--batch_size", type=int, default=1, help="latency batch")
    parser.add_argument("--throughput-batch-size", "--throughput_batch_size", type=int, default=None,
                        help="inference-throughput batch (default 32 on CUDA, off on CPU; 0 = off)")
    parser.add_argument("--train-batch-size", "--train_batch_size", type=int, default=None,
                        help="training-step batch (default 32 on CUDA, 1 on CPU; 0 = off)")
    parser.add_argument("--dtype", default=None, help="fp32, bf16 or fp32,bf16 (default: fp32 on CPU, both on CUDA)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--json", "--json-path", "--json_path", dest="json_path", default=None)
    parser.add_argument("--num-classes", "--num_classes", type=int, default=1)
    parser.add_argument("--in-channels", "--in_channels", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--no-train", action="store_true", help="skip the training step")
    parser.add_argument("--train-reference", action="store_true", help="also train with the slow reference scan")
    parser.add_argument("--no-scans", action="store_true", help="skip timing the selective scan alone")
    parser.add_argument("--cuda-graph", "--cuda_graph", action="store_true",
                        help="CUDA: also time latency and inference replayed as CUDA graphs")
    parser.add_argument("--compile", action="store_true",
                        help="also time the forwards under torch.compile(fullgraph=True)")
    parser.add_argument("--adamw", choices=("fused", "foreach"), default="fused",
                        help="AdamW implementation of the training rows (same maths; default fused)")
    parser.add_argument(
        "--model-kwargs", default=None, help='JSON dict of VMUNet arguments, e.g. \'{"dims": [8,16,32,64]}\''
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return benchmark(
        device=args.device,
        backends=args.backends,
        image_size=args.image_size,
        batch_size=args.batch_size,
        throughput_batch_size=args.throughput_batch_size,
        train_batch_size=args.train_batch_size,
        dtype=args.dtype,
        repeats=args.repeats,
        warmup=args.warmup,
        json_path=args.json_path,
        num_classes=args.num_classes,
        in_channels=args.in_channels,
        threads=args.threads,
        train=not args.no_train,
        train_reference=args.train_reference,
        scans=not args.no_scans,
        cuda_graph=args.cuda_graph,
        compile=args.compile,
        model_kwargs=json.loads(args.model_kwargs) if args.model_kwargs else None,
        adamw=args.adamw,
    )


if __name__ == "__main__":
    main()
