"""Triton kernels of the SS2D core's dt projection ``delta = softplus(dts @ dt_w^T + dt_bias)``: its backward, and its
forward for 16-bit activations.

Imported lazily by ``ss2d_triton`` (needs triton). The reference maths is ``ss2d_triton._ss2d_delta`` (a batched
GEMM per direction) followed by ``softplus``; the backward of that is three GEMM-like reductions over the
B * L rows (ddts, d dt_w, d dt_bias). With dt_rank R = 6..48 those GEMMs are tall and skinny with rows of R
elements (not 16-byte aligned for R = 6 or 12), and cuBLAS picks slow kernels for them: measured on an H200 in a
VM-UNet training step (batch 32, 256x256) they took 7 ms in bf16 and ~28 ms in fp32 (docs/benchmarks.md).
Here one kernel reads the scan's ddelta once, recomputes z = dts @ dt_w^T + bias (dts straight from the x_proj
output ``x_dbl`` (B, L, K, R + 2N)), applies softplus' and writes ddts, and per row block partial sums of d dt_w
and d dt_bias (reduced by the caller, deterministic); its small products are ``tl.dot``: in IEEE fp32 for an fp32
model, on the tensor cores in TF32 for 16-bit activations (``PRECISION``; ``_dot_precision`` in ss2d_triton).

The forward kernel writes the fp32 delta the scan kernels read straight from x_dbl and dt_w (no 16-bit raw delta in
memory, one launch instead of a GEMM and the softplus kernel): with 16-bit activations its ``tl.dot`` runs on the tensor
cores (H200, bf16, batch 32, a variant with bf16 operands: 1.65 instead of 2.47 ms per pass of the 15 cores,
bit-identical to the GEMM + softplus kernel, 64 x 64 tiles; this form reads them as fp32 in TF32, exact for 16-bit
values and right in Triton's interpreter, whose bf16 dot is not). An earlier fused forward (eighth session, a loop over the channels inside each program) was
slower than the GEMM; in IEEE fp32 this one still is at the deep stages (R = 24, 48), so fp32 models keep the GEMM.

Layouts: row m = b * L + l; x_dbl row stride ``sx_m`` (= K * c), direction stride ``sx_k`` (= c), dts at columns
[0, R); dt_w (K, D, R) contiguous; dt_bias (K * D,); delta / ddelta (K, M, D) contiguous; ddts (splits, M, K, R)
partials or, with one split, x_dbl's layout.
"""

import triton
import triton.language as tl

from .ss2d_triton_kernels import _delta, _delta_grad


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


@triton.jit
def _round_to(z, DTYPE: tl.constexpr):
    # fp32 z rounded to DTYPE (to nearest, ties to even) and back. bf16 by its bits: Triton's interpreter truncates a
    # cast to bf16, the GPU rounds; this gives the GPU's rounding in both (NaN and inf stay NaN and inf)
    if DTYPE == tl.bfloat16:
        bits = z.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)
    else:
        return z.to(DTYPE).to(tl.float32)


@triton.jit
def dt_softplus_fwd_kernel(x_ptr, w_ptr, b_ptr, out_ptr, M, DM, sx_m, sx_k,
                           R: tl.constexpr, RP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr,
                           PRECISION: tl.constexpr = "ieee"):
    """delta = softplus(dts @ dt_w^T + bias) in fp32 for one block of rows, one direction and one block of channels
    (grid (M / BLOCK_M, K, D / BLOCK_D)), written to the (K, M, D) delta the scan kernels read. With 16-bit activations
    ``tl.dot`` runs in TF32 (``PRECISION``), where 16-bit values are exact: exact products and fp32 sums, as the batched
    GEMM under autocast; the product is rounded to the activations' dtype as the GEMM returns it, then the bias is
    added and softplus applied in fp32 (``_delta``, as ``softplus_delta_kernel``)."""
    blk = tl.program_id(0)
    k = tl.program_id(1)
    dblk = tl.program_id(2)
    offs_m = blk * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = dblk * BLOCK_D + tl.arange(0, BLOCK_D)
    offs_r = tl.arange(0, RP)
    mask_m = offs_m < M
    mask_d = offs_d < DM
    dts = _dts_block(x_ptr, k, offs_m, M, sx_m, sx_k, R, RP)
    w = _dt_weight_block(w_ptr, k, offs_d, DM, R, RP)
    z = _round_to(tl.dot(dts, w, input_precision=PRECISION), x_ptr.dtype.element_ty)
    bias = tl.load(b_ptr + k * DM + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    out = out_ptr + (k * M + offs_m.to(tl.int64))[:, None] * DM + offs_d[None, :]
    tl.store(out, _delta(z + bias[None, :], True), mask=mask_m[:, None] & mask_d[None, :])
