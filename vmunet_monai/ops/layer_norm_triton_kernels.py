"""Triton kernels of a row-wise LayerNorm (imported lazily by ``layer_norm_triton``; needs triton).

VM-UNet normalises rows of 24 to 1536 channels (B * H * W rows: 131,072 at the first stage, batch 32). PyTorch's
CUDA LayerNorm runs a thread block per row, which at these widths leaves the GPU mostly idle (measured on an H200:
5.9 ms of a 25 ms batch-32 inference, docs/benchmarks.md). Here a program normalises a tile of rows, the
statistics in fp32 (two passes over the tile held in registers), and the backward writes per-program partial
sums of the weight / bias gradients that the caller reduces (deterministic).
"""

import triton
import triton.language as tl


@triton.jit
def _rows(x_ptr, pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # (BLOCK_M, BLOCK_N) tile of a contiguous (M, N) tensor in fp32: offsets, mask, values (0 where masked)
    offs_m = pid.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    offs = offs_m[:, None] * N + offs_n[None, :]
    return offs_m, offs_n, offs, mask, tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _gate(z_ptr, offs_m, offs_n, mask, sz_m):
    # z (row stride sz_m, e.g. the second half of in_proj's output) in fp32, and silu(z) = z sigmoid(z)
    z = tl.load(z_ptr + offs_m[:, None] * sz_m + offs_n[None, :], mask=mask, other=0.0).to(tl.float32)
    sig = tl.sigmoid(z)
    return z, sig, z * sig


@triton.jit
def layer_norm_fwd_kernel(x_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr, M, N, eps, z_ptr, sz_m, sx_k,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
                          SAVE_STATS: tl.constexpr, HAS_GATE: tl.constexpr = False, KP: tl.constexpr = 1):
    """y = (x - mean) / sqrt(var + eps) * w + b per row (biased variance, like torch); saves mean and rstd.

    ``HAS_GATE``: y is then multiplied by silu(z) (SS2D's ``out_norm(y) * silu(z)``). ``KP > 1``: x is the sum of
    KP (M, N) parts ``sx_k`` elements apart (SS2D's four scan directions, summed in order 0, 1, 2, ...).
    """
    offs_m, offs_n, offs, mask, x = _rows(x_ptr, tl.program_id(0), M, N, BLOCK_M, BLOCK_N)
    for k in tl.static_range(1, KP):
        x += tl.load(x_ptr + k * sx_k + offs, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=1) / N
    xc = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / N + eps)
    y = xc * rstd[:, None]
    if HAS_W:
        y = y * tl.load(w_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    if HAS_B:
        y = y + tl.load(b_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    if HAS_GATE:
        y = y * _gate(z_ptr, offs_m, offs_n, mask, sz_m)[2]
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)
    if SAVE_STATS:
        tl.store(mean_ptr + offs_m, mean, mask=offs_m < M)
        tl.store(rstd_ptr + offs_m, rstd, mask=offs_m < M)


@triton.jit
def layer_norm_bwd_kernel(dy_ptr, x_ptr, w_ptr, mean_ptr, rstd_ptr, dx_ptr, dw_part_ptr, db_part_ptr, M, N,
                          TILES, b_ptr, z_ptr, sz_m, dz_ptr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                          HAS_W: tl.constexpr, HAS_B: tl.constexpr = False, HAS_GATE: tl.constexpr = False):
    """dx = rstd (dy w - mean(dy w) - xhat mean(dy w xhat)) per row, for TILES consecutive row tiles per program;
    the program's sums of dy xhat and dy over its rows go to row ``program_id`` of dw_part / db_part.

    ``HAS_GATE`` (forward ``LN(x) * silu(z)``): dy is the gradient of the gated output; the kernel also writes
    dz = dy LN(x) silu'(z) (contiguous (M, N)), recomputing LN(x) from x, mean, rstd, w, b.
    """
    pid = tl.program_id(0)
    offs_n = tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    if HAS_W:
        w = tl.load(w_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    else:
        w = tl.full([BLOCK_N], 1.0, tl.float32)
    if HAS_B:
        bias = tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BLOCK_N], dtype=tl.float32)
    dw_acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    db_acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for i in range(TILES):  # runtime count: one compiled kernel per width, any number of rows
        offs_m, _, offs, mask, x = _rows(x_ptr, pid * TILES + i, M, N, BLOCK_M, BLOCK_N)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + offs_m, mask=offs_m < M, other=0.0)
        rstd = tl.load(rstd_ptr + offs_m, mask=offs_m < M, other=0.0)
        xhat = tl.where(mask, (x - mean[:, None]) * rstd[:, None], 0.0)
        if HAS_GATE:
            z, sig, silu = _gate(z_ptr, offs_m, offs_n, mask, sz_m)
            # d silu(z) / dz = sig (1 + z (1 - sig))
            dz = dy * (xhat * w[None, :] + bias[None, :]) * (sig * (1.0 + z * (1.0 - sig)))
            tl.store(dz_ptr + offs, dz.to(dz_ptr.dtype.element_ty), mask=mask)
            dy = dy * silu
        wdy = dy * w[None, :]
        c1 = tl.sum(xhat * wdy, axis=1) / N
        c2 = tl.sum(wdy, axis=1) / N
        dx = (wdy - (xhat * c1[:, None] + c2[:, None])) * rstd[:, None]
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)
        dw_acc += dy * xhat
        db_acc += dy
    tl.store(dw_part_ptr + pid.to(tl.int64) * N + offs_n, tl.sum(dw_acc, axis=0), mask=mask_n)
    tl.store(db_part_ptr + pid.to(tl.int64) * N + offs_n, tl.sum(db_acc, axis=0), mask=mask_n)
