"""Triton kernel of the backward of the SS2D core's dt projection ``delta = softplus(dts @ dt_w^T + dt_bias)``.

Imported lazily by ``ss2d_triton`` (needs triton). The reference maths is ``ss2d_triton._ss2d_delta`` (a batched
GEMM per direction) followed by ``softplus``; the backward of that is three GEMM-like reductions over the
B * L rows (ddts, d dt_w, d dt_bias). With dt_rank R = 6..48 those GEMMs are tall and skinny with rows of R
elements (not 16-byte aligned for R = 6 or 12), and cuBLAS picks slow kernels for them: measured on an H200 in a
VM-UNet training step (batch 32, 256x256) they took 7 ms in bf16 and ~28 ms in fp32 (docs/benchmarks.md).
Here one kernel reads the scan's ddelta once, recomputes z = dts @ dt_w^T + bias (dts straight from the x_proj
output ``x_dbl`` (B, L, K, R + 2N)), applies softplus' and writes ddts, and per row block partial sums of d dt_w
and d dt_bias (reduced by the caller, deterministic); its small products are ``tl.dot``: in IEEE fp32 for an fp32
model, on the tensor cores in TF32 for 16-bit activations (``PRECISION``; ``_dot_precision`` in ss2d_triton). The
forward keeps the GEMM + elementwise softplus kernel: a fused Triton forward (same maths) measured slower on the
H200 (3.5 ms against ~2 ms per batch-32 bf16 inference; docs/benchmarks.md).

Layouts: row m = b * L + l; x_dbl row stride ``sx_m`` (= K * c), direction stride ``sx_k`` (= c), dts at columns
[0, R); dt_w (K, D, R) contiguous; dt_bias (K * D,); delta / ddelta (K, M, D) contiguous; ddts (splits, M, K, R)
partials or, with one split, x_dbl's layout.
"""

import triton
import triton.language as tl

from .ss2d_triton_kernels import _delta_grad


@triton.jit
def _dts_block(x_ptr, k, offs_m, M, sx_m, sx_k, R: tl.constexpr, RP: tl.constexpr):
    # (BLOCK_M, RP) rows of dts for direction k in fp32 (columns >= R are 0)
    offs_r = tl.arange(0, RP)
    mask = (offs_m < M)[:, None] & (offs_r < R)[None, :]
    ptrs = x_ptr + offs_m.to(tl.int64)[:, None] * sx_m + k * sx_k + offs_r[None, :]
    return tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _dt_weight_block(w_ptr, k, offs_d, DM, R: tl.constexpr, RP: tl.constexpr):
    # (RP, BLOCK_D) = dt_w[k, offs_d, :]^T in fp32 (rows >= R are 0)
    offs_r = tl.arange(0, RP)
    mask = (offs_r < R)[:, None] & (offs_d < DM)[None, :]
    return tl.load(w_ptr + k * DM * R + offs_d[None, :] * R + offs_r[:, None], mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _biased_raw(dts, w, b_ptr, k, offs_d, DM, ROUND_TO: tl.constexpr, PRECISION: tl.constexpr):
    # dts @ w (+ bias) in fp32; the product is first rounded to ROUND_TO (the activations' dtype) the way the
    # GEMM under autocast returns it, so a bf16 model sees the published path's delta
    raw = tl.dot(dts, w, input_precision=PRECISION).to(ROUND_TO).to(tl.float32)
    bias = tl.load(b_ptr + k * DM + offs_d, mask=offs_d < DM, other=0.0).to(tl.float32)
    return raw + bias[None, :]


@triton.jit
def dt_softplus_bwd_kernel(g_ptr, x_ptr, w_ptr, b_ptr, ddts_ptr, dw_part_ptr, db_part_ptr, M, DM, sx_m, sx_k,
                           sg_m, sg_k, sdd_s, sdd_m, sdd_k, d_per_split,
                           R: tl.constexpr, RP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                           PRECISION: tl.constexpr = "ieee"):
    """Backward through softplus and the dt projection for one block of rows, one direction and one range of
    ``d_per_split`` channels (grid (M / BLOCK_M, K, splits)): with G = ddelta * softplus'(z), writes this range's
    share of ddts[m, k, :] = G @ dt_w[k] (into ``ddts_ptr`` at split / row / direction strides ``sdd_*``; with one
    split that is x_dbl's layout and the final ddts), and the block's partials dw_part[block, k] = G^T @ dts (D, R)
    and db_part[block, k] = sum_m G (D,) for its channels. Splitting the channels gives the deep, narrow stages
    (few rows, many channels) enough programs."""
    k = tl.program_id(1)
    blk = tl.program_id(0)
    split = tl.program_id(2)
    offs_m = blk * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    offs_r = tl.arange(0, RP)
    dts = _dts_block(x_ptr, k, offs_m, M, sx_m, sx_k, R, RP)
    ddts = tl.zeros([BLOCK_M, RP], dtype=tl.float32)
    part = blk.to(tl.int64) * tl.num_programs(1) + k  # (block, k) slot of the partial sums
    rows = k.to(tl.int64) * sg_k + offs_m.to(tl.int64) * sg_m
    d_lo = split * d_per_split
    d_hi = tl.minimum(d_lo + d_per_split, DM)
    for d0 in range(d_lo, d_hi, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < d_hi
        w = _dt_weight_block(w_ptr, k, offs_d, DM, R, RP)
        z = _biased_raw(dts, w, b_ptr, k, offs_d, DM, x_ptr.dtype.element_ty, PRECISION)
        mask = mask_m[:, None] & mask_d[None, :]
        g = tl.load(g_ptr + rows[:, None] + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
        g = tl.where(mask, g * _delta_grad(z, True), 0.0)
        ddts += tl.dot(g, tl.trans(w), input_precision=PRECISION)
        dw = tl.dot(tl.trans(g), dts, input_precision=PRECISION)  # (BLOCK_D, RP)
        tl.store(dw_part_ptr + part * DM * R + offs_d[:, None] * R + offs_r[None, :], dw,
                 mask=mask_d[:, None] & (offs_r < R)[None, :])
        tl.store(db_part_ptr + part * DM + offs_d, tl.sum(g, axis=0), mask=mask_d)
    out = ddts_ptr + split.to(tl.int64) * sdd_s + offs_m.to(tl.int64)[:, None] * sdd_m + k * sdd_k + offs_r[None, :]
    tl.store(out, ddts, mask=mask_m[:, None] & (offs_r < R)[None, :])
