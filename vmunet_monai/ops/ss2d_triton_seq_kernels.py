"""Sequential Triton kernels of the fused SS2D scan: one time step per loop iteration (needs triton).

Same arguments and results as ``fwd_kernel`` / ``bwd_kernel`` of ``ss2d_triton_kernels`` (selected by
``ScanConfig.fwd_seq`` / ``bwd_seq``). Instead of tiles of ``BLOCK_L`` steps combined by scan trees, a program
keeps its (N, BLOCK_D) state in registers and steps through time. The state is held transposed, states along
the first axis and channels along the second, so that a thread's registers hold whole channels: the sums over
the states (the output y, and dLoss/d(delta u) in the backward) are then in-thread, and a row of delta / u /
dy (one pixel's channels) has the layout of the state's channel axis, with no per-step layout conversion.
The time loops are software-pipelined by Triton (``tl.range(num_stages=STAGES)``): the loads of the next
``STAGES - 1`` steps are in flight (asynchronous copies into shared memory) while a step is computed, so a
program does not wait for memory at every step.
"""

import triton
import triton.language as tl

from .ss2d_triton_kernels import _delta, _delta_grad, _time_to_pos

LOG2E = tl.constexpr(1.4426950408889634)  # exp(x A) = exp2(x A log2 e)


@triton.jit
def _row_loads(u_base, dl_base, b_base, t, k, L, H, W, offs_d, mask_d, offs_n, mask_n,
               su_l, su_d, sdl_l, sdl_d, sb_l, sb_n, CROSS: tl.constexpr):
    # the loads of time step t (in [0, L)): pixel, raw delta, u and B, with no arithmetic on them
    p = _time_to_pos(t, k, L, H, W, CROSS)
    raw = tl.load(dl_base + p * sdl_l + offs_d * sdl_d, mask=mask_d, other=0.0)
    u = tl.load(u_base + p * su_l + offs_d * su_d, mask=mask_d, other=0.0)
    bm = tl.load(b_base + p * sb_l + offs_n * sb_n, mask=mask_n, other=0.0)
    return p, raw, u, bm


@triton.jit
def _step_delta(raw, bias, mask_d, SOFTPLUS: tl.constexpr, HAS_BIAS: tl.constexpr):
    # (biased raw delta, delta) of a step in fp32. Without softplus the masked-off channels load as 0, so delta is 0
    # there already; with it softplus(0) is not, so they are zeroed (no state update in padding channels)
    biased = raw.to(tl.float32)
    if HAS_BIAS:
        biased = biased + bias
    if SOFTPLUS:
        return biased, tl.where(mask_d, _delta(biased, True), 0.0)
    else:
        return biased, biased


@triton.jit
def _program_setup(a_ptr, dskip_ptr, bias_ptr, DM, K: tl.constexpr, N: tl.constexpr, NP: tl.constexpr,
                   BLOCK_D: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr):
    # this program's (batch, direction) and channel block, its index vectors and masks, and its channels'
    # parameters: A as (N, BLOCK_D), D skip and dt bias as (BLOCK_D,), fp32
    pid_bk = tl.program_id(0)
    pid_d = tl.program_id(1)
    b = (pid_bk // K).to(tl.int64)
    k = pid_bk % K
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < DM
    offs_n = tl.arange(0, NP)
    mask_n = offs_n < N
    mask_nd = mask_n[:, None] & mask_d[None, :]
    ch = k * DM + offs_d
    a_t = tl.load(a_ptr + ch[None, :] * N + offs_n[:, None], mask=mask_nd, other=0.0).to(tl.float32)
    if HAS_D:
        dskip = tl.load(dskip_ptr + ch, mask=mask_d, other=0.0).to(tl.float32)
    else:
        dskip = tl.zeros([BLOCK_D], dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + ch, mask=mask_d, other=0.0).to(tl.float32)
    else:
        bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    return pid_bk, pid_d, b, k, offs_d, mask_d, offs_n, mask_n, mask_nd, ch, a_t, dskip, bias


@triton.jit
def _input_bases(u_ptr, dl_ptr, b_ptr, c_ptr, st_ptr, b, k, pid_bk, offs_d, offs_n, DM, NSLOT,
                 su_b, su_k, sdl_b, sdl_k, sb_b, sb_k, sc_b, sc_k, N: tl.constexpr):
    # this program's (batch, direction) slices of u / delta / B / C, and of the saved states with their
    # offsets (the saved states keep the (d, n) layout of the tile kernels)
    kk = k.to(tl.int64)
    st_base = st_ptr + pid_bk.to(tl.int64) * NSLOT * DM * N
    st_offs = offs_d[None, :] * N + offs_n[:, None]
    return (kk, u_ptr + b * su_b + kk * su_k, dl_ptr + b * sdl_b + kk * sdl_k, b_ptr + b * sb_b + kk * sb_k,
            c_ptr + b * sc_b + kk * sc_k, st_base, st_offs)


@triton.jit
def fwd_seq_kernel(
    u_ptr, dl_ptr, b_ptr, c_ptr, a_ptr, dskip_ptr, bias_ptr, y_ptr, st_ptr,
    L, H: tl.constexpr, W: tl.constexpr, DM, NSLOT,
    su_b, su_k, su_l, su_d,
    sdl_b, sdl_k, sdl_l, sdl_d,
    sb_b, sb_k, sb_l, sb_n,
    sc_b, sc_k, sc_l, sc_n,
    sy_b, sy_k, sy_l, sy_d,
    K: tl.constexpr, N: tl.constexpr, NP: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, CPS: tl.constexpr,
    CROSS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
    SAVE_STATES: tl.constexpr, STAGES: tl.constexpr = 1,
):
    """Forward; saves the state every ``CPS * BLOCK_L`` steps (and at the end) like ``fwd_kernel``."""
    pid_bk, pid_d, b, k, offs_d, mask_d, offs_n, mask_n, mask_nd, ch, a_t, dskip, bias = _program_setup(
        a_ptr, dskip_ptr, bias_ptr, DM, K, N, NP, BLOCK_D, HAS_D, HAS_BIAS)
    a2 = a_t * LOG2E
    kk, u_base, dl_base, b_base, c_base, st_base, st_offs = _input_bases(
        u_ptr, dl_ptr, b_ptr, c_ptr, st_ptr, b, k, pid_bk, offs_d, offs_n, DM, NSLOT,
        su_b, su_k, sdl_b, sdl_k, sb_b, sb_k, sc_b, sc_k, N)
    y_base = y_ptr + b * sy_b + kk * sy_k
    SEG: tl.constexpr = CPS * BLOCK_L

    h = tl.zeros([NP, BLOCK_D], dtype=tl.float32)
    for t in tl.range(0, L, num_stages=STAGES):
        if SAVE_STATES:
            if t % SEG == 0:
                tl.store(st_base + (t // SEG) * DM * N + st_offs, h, mask=mask_nd)
        p, raw, u, bm = _row_loads(u_base, dl_base, b_base, t, k, L, H, W, offs_d, mask_d, offs_n, mask_n,
                                   su_l, su_d, sdl_l, sdl_d, sb_l, sb_n, CROSS)
        cm = tl.load(c_base + p * sc_l + offs_n * sc_n, mask=mask_n, other=0.0)
        _raw, dlt = _step_delta(raw, bias, mask_d, SOFTPLUS, HAS_BIAS)
        uf = u.to(tl.float32)
        h = tl.exp2(a2 * dlt[None, :]) * h + bm.to(tl.float32)[:, None] * (dlt * uf)[None, :]
        y = tl.sum(h * cm.to(tl.float32)[:, None], axis=0) + dskip * uf
        tl.store(y_base + p * sy_l + offs_d * sy_d, y, mask=mask_d)
    if SAVE_STATES:
        tl.store(st_base + (NSLOT - 1) * DM * N + st_offs, h, mask=mask_nd)


@triton.jit
def bwd_seq_kernel(
    u_ptr, dl_ptr, b_ptr, c_ptr, a_ptr, dskip_ptr, bias_ptr, dy_ptr, st_ptr, scr_ptr,
    du_ptr, ddl_ptr, db_ptr, dc_ptr, da_ptr, dd_ptr,
    L, H: tl.constexpr, W: tl.constexpr, DM, NSLOT,
    su_b, su_k, su_l, su_d,
    sdl_b, sdl_k, sdl_l, sdl_d,
    sb_b, sb_k, sb_l, sb_n,
    sc_b, sc_k, sc_l, sc_n,
    sdy_b, sdy_k, sdy_l, sdy_d,
    sdu_b, sdu_k, sdu_l, sdu_d,
    sddl_b, sddl_k, sddl_l, sddl_d,
    sdb_p, sdb_b, sdb_k, sdb_l, sdb_n,
    sdc_p, sdc_b, sdc_k, sdc_l, sdc_n,
    K: tl.constexpr, N: tl.constexpr, NP: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_D: tl.constexpr, CPS: tl.constexpr,
    CROSS: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_D: tl.constexpr, HAS_BIAS: tl.constexpr,
    STAGES: tl.constexpr = 1,
):
    """Backward, walking the segments (``CPS * BLOCK_L`` steps, a saved forward state at the start of each)
    from the end of time.

    Per segment a forward pass stores the state at every sub-segment start (``BLOCK_L`` steps); per
    sub-segment, from the last one, a forward pass stores h_{t-1} of each step, then a reverse pass reads them back
    (and writes dC_t from h_t, the state read back one step before): g_t = C_t dy_t + w with
    w = exp(delta_{t+1} A) g_{t+1} carried from the step after. The scratch is program-private: (CPS + BLOCK_L)
    states of (N, BLOCK_D).
    """
    pid_bk, pid_d, b, k, offs_d, mask_d, offs_n, mask_n, mask_nd, ch, a_t, dskip, bias = _program_setup(
        a_ptr, dskip_ptr, bias_ptr, DM, K, N, NP, BLOCK_D, HAS_D, HAS_BIAS)
    a2 = a_t * LOG2E
    kk, u_base, dl_base, b_base, c_base, st_base, st_offs = _input_bases(
        u_ptr, dl_ptr, b_ptr, c_ptr, st_ptr, b, k, pid_bk, offs_d, offs_n, DM, NSLOT,
        su_b, su_k, sdl_b, sdl_k, sb_b, sb_k, sc_b, sc_k, N)
    dy_base = dy_ptr + b * sdy_b + kk * sdy_k
    du_base = du_ptr + b * sdu_b + kk * sdu_k
    ddl_base = ddl_ptr + b * sddl_b + kk * sddl_k
    db_base = db_ptr + pid_d.to(tl.int64) * sdb_p + b * sdb_b + kk * sdb_k
    dc_base = dc_ptr + pid_d.to(tl.int64) * sdc_p + b * sdc_b + kk * sdc_k
    pid_lin = pid_bk.to(tl.int64) * tl.num_programs(1) + pid_d
    scr_base = scr_ptr + pid_lin * (CPS + BLOCK_L) * NP * BLOCK_D  # sub-segment start states
    hist_base = scr_base + CPS * NP * BLOCK_D  # h_{t-1} of each step of the current sub-segment
    scr_offs = tl.arange(0, BLOCK_D)[None, :] * NP + offs_n[:, None]
    STATE: tl.constexpr = NP * BLOCK_D

    w = tl.zeros([NP, BLOCK_D], dtype=tl.float32)
    da_acc = tl.zeros([NP, BLOCK_D], dtype=tl.float32)
    dd_acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    SEG: tl.constexpr = CPS * BLOCK_L
    n_seg = tl.cdiv(L, SEG)
    for si in range(0, n_seg):
        s = n_seg - 1 - si
        t_lo = s * SEG
        t_hi = tl.minimum(t_lo + SEG, L)
        n_sub = tl.cdiv(t_hi - t_lo, BLOCK_L)
        # the saved state is (d, n)-major in memory: pass it through the (n, d)-major scratch so that its
        # layout, not the saved one, is the state's register layout in the loops below
        tl.store(scr_base + scr_offs, tl.load(st_base + s * DM * N + st_offs, mask=mask_nd, other=0.0))
        tl.debug_barrier()
        h = tl.load(scr_base + scr_offs)
        if CPS > 1:
            # the states at the sub-segment starts
            # (the steps of the last sub-segment are not needed: only its start state is)
            for t in tl.range(t_lo, t_lo + (n_sub - 1) * BLOCK_L, num_stages=STAGES):
                if (t - t_lo) % BLOCK_L == 0:
                    tl.store(scr_base + ((t - t_lo) // BLOCK_L) * STATE + scr_offs, h)
                _p, raw, u, bm = _row_loads(u_base, dl_base, b_base, t, k, L, H, W, offs_d, mask_d, offs_n, mask_n,
                                            su_l, su_d, sdl_l, sdl_d, sb_l, sb_n, CROSS)
                _raw, dlt = _step_delta(raw, bias, mask_d, SOFTPLUS, HAS_BIAS)
                h = tl.exp2(a2 * dlt[None, :]) * h + bm.to(tl.float32)[:, None] * (dlt * u.to(tl.float32))[None, :]
            tl.store(scr_base + (n_sub - 1) * STATE + scr_offs, h)
            tl.debug_barrier()
        for ji in range(0, n_sub):
            j = n_sub - 1 - ji
            lo = t_lo + j * BLOCK_L
            hi = tl.minimum(lo + BLOCK_L, t_hi)
            if CPS > 1:
                h = tl.load(scr_base + j * STATE + scr_offs)
            # forward over the sub-segment: keep h_{t-1} of each step
            for t in tl.range(lo, hi, num_stages=STAGES):
                tl.store(hist_base + (t - lo) * STATE + scr_offs, h)
                _p, raw, u, bm = _row_loads(u_base, dl_base, b_base, t, k, L, H, W, offs_d, mask_d, offs_n, mask_n,
                                            su_l, su_d, sdl_l, sdl_d, sb_l, sb_n, CROSS)
                _raw, dlt = _step_delta(raw, bias, mask_d, SOFTPLUS, HAS_BIAS)
                h = tl.exp2(a2 * dlt[None, :]) * h + bm.to(tl.float32)[:, None] * (dlt * u.to(tl.float32))[None, :]
            tl.debug_barrier()
            # reverse over the sub-segment. h_t, which dC_t = sum_d dy_t h_t needs, is the h_{t-1} read back at the
            # step after (the forward pass's last state for the sub-segment's last step): dC costs no recomputation
            # and no second read of dy in the forward pass
            h_t = h
            for ti in tl.range(0, hi - lo, num_stages=STAGES):
                t = hi - 1 - ti
                p, raw, u, bm = _row_loads(u_base, dl_base, b_base, t, k, L, H, W, offs_d, mask_d, offs_n, mask_n,
                                           su_l, su_d, sdl_l, sdl_d, sb_l, sb_n, CROSS)
                dyf = tl.load(dy_base + p * sdy_l + offs_d * sdy_d, mask=mask_d, other=0.0).to(tl.float32)
                cm = tl.load(c_base + p * sc_l + offs_n * sc_n, mask=mask_n, other=0.0).to(tl.float32)
                h_prev = tl.load(hist_base + (t - lo) * STATE + scr_offs)
                tl.store(dc_base + p * sdc_l + offs_n * sdc_n, tl.sum(h_t * dyf[None, :], axis=1), mask=mask_n)
                h_t = h_prev
                raw, dlt = _step_delta(raw, bias, mask_d, SOFTPLUS, HAS_BIAS)
                uf = u.to(tl.float32)
                g = w + cm[:, None] * dyf[None, :]
                da = tl.exp2(a2 * dlt[None, :])
                gb = tl.sum(g * bm.to(tl.float32)[:, None], axis=0)
                tl.store(db_base + p * sdb_l + offs_n * sdb_n, tl.sum(g * (dlt * uf)[None, :], axis=1), mask=mask_n)
                w = g * da  # the carry to step t - 1, exp(delta_t A) g_t
                x = w * h_prev  # g_t exp(delta_t A) h_{t-1}
                da_acc += x * dlt[None, :]
                d_dlt = tl.sum(x * a_t, axis=0) + gb * uf
                tl.store(du_base + p * sdu_l + offs_d * sdu_d, gb * dlt + dskip * dyf, mask=mask_d)
                # (masked-off channels are not stored, so no zeroing of their gradient)
                tl.store(ddl_base + p * sddl_l + offs_d * sddl_d, d_dlt * _delta_grad(raw, SOFTPLUS), mask=mask_d)
                dd_acc += dyf * uf
            tl.debug_barrier()
    tl.store(da_ptr + b * (K * DM * N) + ch[None, :] * N + offs_n[:, None], da_acc, mask=mask_nd)
    tl.store(dd_ptr + b * (K * DM) + ch, dd_acc, mask=mask_d)

