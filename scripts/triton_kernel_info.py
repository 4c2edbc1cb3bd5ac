#!/usr/bin/env python
"""Compile the Triton SS2D kernels for an NVIDIA GPU on a machine without one and print their resources.

Triton compiles ahead of time for a named target (``GPUTarget("cuda", 90, 32)`` = Hopper, e.g. H100/H200)
without a GPU; the ``ptxas`` shipped in the triton wheel then reports registers and spills. Layout conversions
(``ttg.convert_layout``, each a round trip through shared memory when it is not a no-op) are counted in the
kernel's TritonGPU IR. Used to compare kernel variants before spending GPU time; the numbers come from the local
Triton version, which may differ from the GPU machine's (docs/benchmarks.md says which was used where).

    python scripts/triton_kernel_info.py                    # default tiles of every kernel, sm_90
    python scripts/triton_kernel_info.py --arch 80 --dump /tmp/ir   # A100; also write the IR and PTX
    python scripts/triton_kernel_info.py --loops            # and the SASS instructions per loop (per time step)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton's default; set to silence its warning


def compile_kernel(fn, constexprs: dict, num_warps: int, arch: int, pointers: "dict | None" = None):
    """Compile ``fn`` with pointer arguments as fp32 pointers (``pointers``: other types by name, e.g.
    ``{"u_ptr": "*bf16"}``) and the other runtime arguments as int32."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    # Specialise the way a launch does: the channel / state strides of the scan's tensors are 1 (Triton turns an
    # int argument equal to 1 into the constant 1, which makes the loads vectorisable) and the pointers and the
    # other integers of the 256x256 paper network are multiples of 16 (the ``tt.divisibility`` hint)
    unit = {name for name in fn.arg_names if re.fullmatch(r"s[a-z]+_[dn]", name)}
    constexprs = dict(constexprs, **{name: 1 for name in unit})
    sig = {name: ("constexpr" if name in constexprs else (pointers or {}).get(name, "*fp32")
                  if name.endswith("_ptr") else "i32") for name in fn.arg_names}
    attrs = {(i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names) if sig[name] != "constexpr"}
    source = ASTSource
    if type(fn).__name__ == "GluonJITFunction":  # a Gluon kernel: its own source class (layouts are explicit)
        try:
            from triton.experimental.gluon._runtime import GluonASTSource as source
        except ImportError:
            from triton.experimental.gluon import GluonASTSource as source
    src = source(fn=fn, signature=sig, attrs=attrs,
                 constexprs={(fn.arg_names.index(k),): v for k, v in constexprs.items()})
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})


def ptxas_report(ptx: str, arch: int) -> str:
    """Registers / spills of the PTX, from the ptxas bundled with triton (the newest one that accepts it)."""
    import triton

    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    ptx_file = Path(os.environ.get("TMPDIR", "/tmp")) / "vmunet_kernel_info.ptx"
    ptx_file.write_text(ptx)
    for exe in ("ptxas-blackwell", "ptxas"):
        if not (bin_dir / exe).exists():
            continue
        out = subprocess.run([str(bin_dir / exe), "-v", f"-arch=sm_{arch}a" if arch >= 90 else f"-arch=sm_{arch}",
                              str(ptx_file), "-o", os.devnull], capture_output=True, text=True)
        lines = [ln.split(":", 1)[-1].strip() for ln in out.stderr.splitlines() if "registers" in ln or "spill" in ln]
        if out.returncode == 0 and lines:
            return "; ".join(lines)
    return "ptxas unavailable"


def loop_report(ptx: str, arch: int) -> "list[str]":
    """Instructions per loop of the SASS (``cuobjdump`` of the ptxas-built cubin, both from the triton wheel): one
    line per backward branch, innermost loops first, with the count of the main instruction kinds. Shows what a time
    step of the sequential scans costs beyond its arithmetic (shuffles, shared-memory round trips, barriers)."""
    import collections
    import triton

    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    ptx_file, cubin = tmp / "vmunet_kernel_loops.ptx", tmp / "vmunet_kernel_loops.cubin"
    ptx_file.write_text(ptx)
    for exe in ("ptxas-blackwell", "ptxas"):
        if (bin_dir / exe).exists() and subprocess.run(
                [str(bin_dir / exe), f"-arch=sm_{arch}a" if arch >= 90 else f"-arch=sm_{arch}", str(ptx_file),
                 "-o", str(cubin)], capture_output=True).returncode == 0:
            break
    else:
        return ["ptxas unavailable"]
    if not (bin_dir / "cuobjdump").exists():
        return ["cuobjdump unavailable"]
    sass = subprocess.run([str(bin_dir / "cuobjdump"), "-sass", str(cubin)], capture_output=True, text=True).stdout
    ins = [(int(m.group(1), 16), m.group(2).strip()) for m in
           (re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?);", line) for line in sass.splitlines()) if m]
    index = {addr: i for i, (addr, _) in enumerate(ins)}
    loops = []
    for i, (addr, text) in enumerate(ins):
        target = re.search(r"BRA\s.*?0x([0-9a-f]+)", text)
        if target and int(target.group(1), 16) <= addr and int(target.group(1), 16) in index:
            loops.append((index[int(target.group(1), 16)], i))
    kinds = ("MUFU", "FFMA", "FMUL", "FADD", "SHFL", "BAR", "LDS", "STS", "LDG", "STG", "LDGSTS")
    lines = []
    for start, end in sorted(loops, key=lambda se: se[1] - se[0]):
        ops = collections.Counter((t.split()[1] if t.startswith("@") else t.split()[0]).split(".")[0]
                                  for _, t in ins[start:end + 1])
        lines.append(f"loop {ins[start][0]:#x}-{ins[end][0]:#x}: {end - start + 1} instructions; "
                     + ", ".join(f"{k} {ops[k]}" for k in kinds if ops[k]))
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", type=int, default=90, help="compute capability x10 (90 = Hopper, 80 = Ampere)")
    parser.add_argument("--dump", default=None, help="folder to write each kernel's TTGIR and PTX into")
    parser.add_argument("--loops", action="store_true", help="also count the SASS instructions of each kernel's loops")
    args = parser.parse_args()

    from vmunet_monai.ops import dt_proj_triton_kernels as dt
    from vmunet_monai.ops import layer_norm_triton as lnt
    from vmunet_monai.ops import layer_norm_triton_kernels as ln
    from vmunet_monai.ops import ss2d_triton as st
    from vmunet_monai.ops import ss2d_triton_kernels as tile
    from vmunet_monai.ops import ss2d_triton_seq_kernels as seq

    cfg = st.config_for_length(st.get_config(), 64 * 64)  # the stage-1 choice of the per-length fields
    pre = bool(cfg.pre_softplus)  # softplus(delta + bias) outside the scan kernels
    common = dict(K=4, N=16, NP=16, H=64, W=64, CROSS=True, SOFTPLUS=not pre, HAS_D=True, HAS_BIAS=not pre)
    fwd_cps = cfg.seg_len // cfg.fwd_block_l
    bwd_cps = cfg.seg_len // cfg.bwd_block_l
    # a bf16 (autocast) model's dt backward reads these as bf16
    bf16 = {name: "*bf16" for name in ("x_ptr", "w_ptr", "g_ptr")}
    # entries: (name, kernel, warps, constexprs[, pointer types])
    kernels = [
        ("fwd_kernel (tile)", tile.fwd_kernel, cfg.fwd_warps,
         dict(common, BLOCK_L=cfg.fwd_block_l, BLOCK_D=cfg.fwd_block_d, CPS=fwd_cps, SAVE_STATES=True)),
        ("fwd_seq_kernel", seq.fwd_seq_kernel, cfg.fwd_seq_warps,
         dict(common, BLOCK_L=cfg.fwd_block_l, BLOCK_D=cfg.fwd_seq_block_d, CPS=fwd_cps, SAVE_STATES=True,
              STAGES=cfg.seq_stages)),
        ("bwd_kernel (tile, 8x32, 4 warps)", tile.bwd_kernel, 4,
         dict(common, BLOCK_L=8, BLOCK_D=32, CPS=cfg.seg_len // 8, REV_FLIP=False)),
        ("bwd_seq_kernel", seq.bwd_seq_kernel, cfg.bwd_warps,
         dict(common, BLOCK_L=cfg.bwd_block_l, BLOCK_D=cfg.bwd_block_d, CPS=bwd_cps, STAGES=cfg.seq_stages)),
        ("softplus_delta_kernel", tile.softplus_delta_kernel, 4, dict(BLOCK=st._SOFTPLUS_BLOCK)),
        ("softplus_grad_kernel", tile.softplus_grad_kernel, 4, dict(BLOCK=st._SOFTPLUS_BLOCK)),
    ]
    # the Gluon kernels take B / C rows of the stage-1 x_dbl (32, 4096, 4, 6 + 32) fp32 copy as a launch passes them:
    # strides as constants and the rows' offsets from 16-byte boundaries (ss2d_triton._gluon_row_args)
    c_dbl = 6 + 2 * 16
    rows = dict(sb_b=4096 * 4 * c_dbl, sb_k=c_dbl, sb_l=4 * c_dbl, sc_b=4096 * 4 * c_dbl, sc_k=c_dbl, sc_l=4 * c_dbl,
                B_OFF=6 % 4, C_OFF=(6 + 16) % 4)
    gluon_fwd = st._gluon_kernel("fwd_seq_gluon_kernel")
    if gluon_fwd is not None:  # the Gluon forward (ScanConfig.fwd_gluon)
        kernels.append(("fwd_seq_gluon_kernel", gluon_fwd, cfg.fwd_seq_block_d // 32,
                        dict(common, SOFTPLUS=False, HAS_BIAS=False, BLOCK_L=cfg.fwd_block_l,
                             BLOCK_D=cfg.fwd_seq_block_d, CPS=fwd_cps, SAVE_STATES=True, STAGES=cfg.seq_stages,
                             **rows)))
    gluon_bwd = st._gluon_kernel("bwd_seq_gluon_kernel")
    if gluon_bwd is not None:  # the Gluon backward (ScanConfig.bwd_gluon), with a 16-bit model's gradients, its
        # h_{t-1} history in global scratch and (the default) in shared memory
        for tag, c in ((", history in global scratch", replace(cfg, bwd_hist_smem=0)),
                       (", history in shared memory", replace(cfg, bwd_hist_smem=1))):
            kernels.append((f"bwd_seq_gluon_kernel{tag}", gluon_bwd, 1,
                            dict(common, SOFTPLUS=False, HAS_BIAS=False, BLOCK_L=c.bwd_block_l, BLOCK_D=32,
                                 CPS=cfg.seg_len // c.bwd_block_l, STAGES=cfg.seq_stages,
                                 HIST_SMEM=bool(c.bwd_hist_smem == 1 and c.bwd_block_l <= st._HIST_SMEM_MAX_STEPS),
                                 **rows),
                            {name: "*bf16" for name in ("du_ptr", "ddl_ptr", "db_ptr", "dc_ptr")}))
    for r, m, dm in ((6, 32 * 4096, 192), (48, 32 * 64, 1536)):  # the first and the last VM-UNet stage, batch 32
        for precision, tag, pointers in (("ieee", "", {}), ("tf32", ", bf16", bf16)):
            rp, block_m, warps, block_d, _, _ = st._dt_tiles(r, m, dm, 4, precision)
            kernels.append((f"dt_softplus_bwd_kernel (R={r}{tag})", dt.dt_softplus_bwd_kernel, warps,
                            dict(R=r, RP=rp, BLOCK_M=block_m, BLOCK_D=block_d, PRECISION=precision), pointers))
        # the fused dt forward runs for 16-bit activations only
        block_m, block_d, warps = st._DT_FWD_TILE
        kernels.append((f"dt_softplus_fwd_kernel (R={r}, bf16)", dt.dt_softplus_fwd_kernel, warps,
                        dict(R=r, RP=max(16, st._next_pow2(r)), BLOCK_M=block_m, BLOCK_D=block_d, PRECISION="tf32"),
                        {"x_ptr": "*bf16", "w_ptr": "*bf16"}))
    # LayerNorm: a plain one at the first stage's width; SS2D's out_norm + gate (summing the four scan directions
    # in the forward, as at inference) at the widest
    for width, gate in ((96, False), (1536, True)):
        block_n, block_m, warps = lnt._tiles(width)
        bwd_n, bwd_m, bwd_warps = lnt._tiles(width, lnt._TILE // 2)
        tag = f"C={width}{', gated' if gate else ''}"
        kernels += [
            (f"layer_norm_fwd_kernel ({tag})", ln.layer_norm_fwd_kernel, warps,
             dict(BLOCK_M=block_m, BLOCK_N=block_n, HAS_W=True, HAS_B=True, SAVE_STATS=not gate, HAS_GATE=gate,
                  KP=4 if gate else 1)),
            (f"layer_norm_bwd_kernel ({tag})", ln.layer_norm_bwd_kernel, bwd_warps,
             dict(BLOCK_M=bwd_m, BLOCK_N=bwd_n, HAS_W=True, HAS_B=gate, HAS_GATE=gate)),
        ]
    print(f"config {cfg}; target sm_{args.arch}")
    for name, fn, warps, constexprs, *pointers in kernels:
        try:
            compiled = compile_kernel(fn, constexprs, warps, args.arch, *pointers)
        except Exception as err:  # report and go on: one kernel failing to compile must not hide the others
            print(f"  {name:36s} compile error: {type(err).__name__}: {str(err).splitlines()[0]}")
            continue
        ttgir = compiled.asm["ttgir"]
        print(f"  {name:36s} warps {warps}: {ptxas_report(compiled.asm['ptx'], args.arch)}; "
              f"{ttgir.count('ttg.convert_layout')} layout conversions, "
              f"{ttgir.count('async_copy_global_to_local')} pipelined (async) loads")
        if args.loops:
            for line in loop_report(compiled.asm["ptx"], args.arch):
                print(f"      {line}")
        if args.dump:
            out = Path(args.dump)
            out.mkdir(parents=True, exist_ok=True)
            stem = fn.__name__
            (out / f"{stem}.ttgir").write_text(ttgir)
            (out / f"{stem}.ptx").write_text(compiled.asm["ptx"])


if __name__ == "__main__":
    main()
