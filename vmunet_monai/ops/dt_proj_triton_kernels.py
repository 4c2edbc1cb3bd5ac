"""Triton kernels of the SS2D core's dt projection: ``delta = softplus(dts @ dt_w^T + dt_bias)`` and its backward.

Imported lazily by ``ss2d_triton`` (needs triton). The reference maths is ``ss2d_triton._ss2d_delta`` (a batched
GEMM per direction) followed by ``softplus``; the backward of that is three GEMM-like reductions over the
B * L rows (ddts, d dt_w, d dt_bias). With dt_rank R = 6..48 those GEMMs are tall and skinny with rows of R
elements (not 16-byte aligned for R = 6 or 12), and cuBLAS picks slow kernels for them: measured on an H200 in a
VM-UNet training step (batch 32, 256x256) they took 7 ms in bf16 and ~28 ms in fp32 (docs/benchmarks.md).
Here each kernel reads dts straight from the x_proj output ``x_dbl`` (B, L, K, R + 2N) and does its small
products as R rank-1 updates / reductions in fp32; the forward writes the fp32 delta the scan kernels read (no raw-delta
tensor, no separate softplus pass), the backward reads the scan's ddelta once and writes ddts, and per row block
partial sums of d dt_w and d dt_bias (reduced by the caller, deterministic).

Layouts: row m = b * L + l; x_dbl row stride ``sx_m`` (= K * c), direction stride ``sx_k`` (= c), dts at columns
[0, R); dt_w (K, D, R) contiguous; dt_bias (K * D,); delta / ddelta (K, M, D) contiguous.
"""

import triton
import triton.language as tl

from .ss2d_triton_kernels import _delta, _delta_grad


@triton.jit
def _biased_raw(x_ptr, w_ptr, b_ptr, k, offs_m, offs_d, M, DM, sx_m, sx_k, R: tl.constexpr, ROUND_TO: tl.constexpr):
    # (BLOCK_M, BLOCK_D) of dts @ dt_w[k]^T + bias in fp32, as R rank-1 updates (R = 6..48: a tl.dot would pad R
    # to 16..64 and move both operands through shared memory). The product is rounded to ROUND_TO (the
    # activations' dtype) the way the GEMM under autocast returns it, so a bf16 model sees the published delta
    mask_m = offs_m < M
    mask_d = offs_d < DM
    rows = x_ptr + offs_m.to(tl.int64) * sx_m + k * sx_k
    cols = w_ptr + k * DM * R + offs_d * R
    raw = tl.zeros([offs_m.shape[0], offs_d.shape[0]], dtype=tl.float32)
    for r in tl.static_range(R):
        dts_r = tl.load(rows + r, mask=mask_m, other=0.0).to(tl.float32)
        w_r = tl.load(cols + r, mask=mask_d, other=0.0).to(tl.float32)
        raw += dts_r[:, None] * w_r[None, :]
    bias = tl.load(b_ptr + k * DM + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    return raw.to(ROUND_TO).to(tl.float32) + bias[None, :]


@triton.jit
def dt_softplus_fwd_kernel(x_ptr, w_ptr, b_ptr, out_ptr, M, DM, sx_m, sx_k,
                           R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[k, m, d] = softplus(sum_r dts[m, k, r] dt_w[k, d, r] + bias[k, d]) in fp32; grid (M / BLOCK_M,
    D / BLOCK_D, K)."""
    k = tl.program_id(2)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    z = _biased_raw(x_ptr, w_ptr, b_ptr, k, offs_m, offs_d, M, DM, sx_m, sx_k, R, x_ptr.dtype.element_ty)
    mask = (offs_m < M)[:, None] & (offs_d < DM)[None, :]
    rows = k.to(tl.int64) * M + offs_m.to(tl.int64)
    tl.store(out_ptr + rows[:, None] * DM + offs_d[None, :], _delta(z, True), mask=mask)


@triton.jit
def dt_softplus_bwd_kernel(g_ptr, x_ptr, w_ptr, b_ptr, ddts_ptr, dw_part_ptr, db_part_ptr, M, DM, sx_m, sx_k,
                           sg_m, sg_k,
                           R: tl.constexpr, RP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """Backward through softplus and the dt projection for one block of rows and one direction (grid (M /
    BLOCK_M, K)): with G = ddelta * softplus'(z), writes ddts[m, k, :] = G @ dt_w[k] (into ``ddts_ptr``, with
    x_dbl's row / direction strides), and the block's partials dw_part[block, k] = G^T @ dts (D, R) and
    db_part[block, k] = sum_m G (D,)."""
    k = tl.program_id(1)
    blk = tl.program_id(0)
    offs_m = blk * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    offs_r = tl.arange(0, RP)
    ddts = tl.zeros([BLOCK_M, RP], dtype=tl.float32)
    part = blk.to(tl.int64) * tl.num_programs(1) + k  # (block, k) slot of the partial sums
    rows = k.to(tl.int64) * sg_k + offs_m.to(tl.int64) * sg_m
    x_rows = x_ptr + offs_m.to(tl.int64) * sx_m + k * sx_k
    for d0 in range(0, DM, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < DM
        z = _biased_raw(x_ptr, w_ptr, b_ptr, k, offs_m, offs_d, M, DM, sx_m, sx_k, R, x_ptr.dtype.element_ty)
        mask = mask_m[:, None] & mask_d[None, :]
        g = tl.load(g_ptr + rows[:, None] + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
        g = tl.where(mask, g * _delta_grad(z, True), 0.0)
        tl.store(db_part_ptr + part * DM + offs_d, tl.sum(g, axis=0), mask=mask_d)
        for r in tl.static_range(R):
            dts_r = tl.load(x_rows + r, mask=mask_m, other=0.0).to(tl.float32)
            w_r = tl.load(w_ptr + k * DM * R + offs_d * R + r, mask=mask_d, other=0.0).to(tl.float32)
            tl.store(dw_part_ptr + part * DM * R + offs_d * R + r, tl.sum(g * dts_r[:, None], axis=0), mask=mask_d)
            ddts += tl.where(offs_r[None, :] == r, tl.sum(g * w_r[None, :], axis=1)[:, None], 0.0)
    out = ddts_ptr + offs_m.to(tl.int64)[:, None] * sx_m + k * sx_k + offs_r[None, :]
    tl.store(out, ddts, mask=mask_m[:, None] & (offs_r < R)[None, :])
