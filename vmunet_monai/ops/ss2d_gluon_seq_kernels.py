"""Sequential backward of the fused SS2D scan written in Gluon (Triton's layout-explicit dialect; needs a Triton
with ``triton.experimental.gluon``: 3.6 on the H200 machine, 3.9 here). Opt-in: ``ScanConfig.bwd_gluon = 1``.

Same arguments, maths and results as ``bwd_seq_kernel`` (``ss2d_triton_seq_kernels``) for its default path: delta
already softplus'd (``pre_softplus``), no bias in the kernel, the four cross-scan directions, 16 states, 32 channels
per one-warp program. Written to test whether the Triton kernel's shared-memory traffic limits it: Triton derives the
register layout of the (states, channels) state from the h_{t-1} history's memory order and gives each thread 4
states of 4 channels 8 apart, so that every row of delta / u / dy costs 4 scalar shared-memory reads after its
asynchronous copy, and every stored vector (du, ddelta, dB, dC) a round trip through shared memory and a barrier.
Here the layout is stated: each thread holds a 4 x 4 tile, 4 consecutive states of 4 consecutive channels (4 lanes
along the states, 8 along the channels), so

* a row of channels (delta, u, dy) and a row of states (B, C) are one 16-byte load per thread, straight from global
  memory into registers (no shared memory); they are issued ahead (registers carried through the loop: rows two
  steps, the history one step) to hide their latency;
* du / ddelta / dB / dC are stored from the layout the sums leave them in (no conversion);
* the h_{t-1} history is 4 16-byte stores / loads per thread per step, each thread reading back what it wrote
  (no barrier).

Per time step at 64 x 64 (sm_90 SASS, ``python scripts/triton_kernel_info.py --loops``) that is 7 + 53 memory /
shuffle instructions against the Triton kernel's 21 + 88, for about as many instructions in all. Measured on the
H200 (docs/benchmarks.md, eleventh session) it is nevertheless slower: 6.5 against 4.9 ms per stage-1 backward (batch
32, bf16), 40.5 against 31.1 ms for the network's 15 cores. Loads two steps ahead through registers hide less
latency than the Triton kernel's 4-deep asynchronous-copy pipeline, and deeper register prefetching does not fit in
the 255 registers. The next step is this layout with asynchronous copies into shared memory (``gl.nvidia`` async
copy) read back as 16-byte vectors; until it is faster the Triton kernel stays the default.
"""

from triton.experimental import gluon
from triton.experimental.gluon import language as gl

LOG2E = gl.constexpr(1.4426950408889634)  # exp(x A) = exp2(x A log2 e)


@gluon.jit
def _pos(t, k, L, H: gl.constexpr, W: gl.constexpr):
    # pixel (row-major) read at time t by cross-scan direction k (0: rows, 1: columns, 2 / 3: their reverses),
    # as ``_time_to_pos`` with CROSS; integer arithmetic on scalars instead of selects
    rev = (k >= 2).to(gl.int32)
    tt = t + rev * (L - 1 - 2 * t)
    return tt + (k % 2) * ((tt % H) * W + tt // H - tt)


@gluon.jit
def _fwd_rows(u_base, dl_base, b_base, t, k, L, H: gl.constexpr, W: gl.constexpr, offs_d, mask_d, offs_n, mask_n,
              su_l, su_d, sdl_l, sdl_d, sb_l, sb_n):
    # delta, u (channel rows) and B (state row) of time step t, fp32
    p = _pos(t, k, L, H, W)
    dlt = gl.load(dl_base + p * sdl_l + offs_d * sdl_d, mask=mask_d, other=0.0).to(gl.float32)
    u = gl.load(u_base + p * su_l + offs_d * su_d, mask=mask_d, other=0.0).to(gl.float32)
    bm = gl.load(b_base + p * sb_l + offs_n * sb_n, mask=mask_n, other=0.0).to(gl.float32)
    return dlt, u, bm


@gluon.jit
def _rev_rows(u_base, dl_base, b_base, c_base, dy_base, t, k, L, H: gl.constexpr, W: gl.constexpr,
              offs_d, mask_d, offs_n, mask_n, su_l, su_d, sdl_l, sdl_d, sb_l, sb_n, sc_l, sc_n, sdy_l, sdy_d):
    # the rows the reverse pass reads for step t: pixel, delta, u, dy, B and C
    p = _pos(t, k, L, H, W)
    dlt = gl.load(dl_base + p * sdl_l + offs_d * sdl_d, mask=mask_d, other=0.0).to(gl.float32)
    u = gl.load(u_base + p * su_l + offs_d * su_d, mask=mask_d, other=0.0).to(gl.float32)
    dy = gl.load(dy_base + p * sdy_l + offs_d * sdy_d, mask=mask_d, other=0.0).to(gl.float32)
    bm = gl.load(b_base + p * sb_l + offs_n * sb_n, mask=mask_n, other=0.0).to(gl.float32)
    cm = gl.load(c_base + p * sc_l + offs_n * sc_n, mask=mask_n, other=0.0).to(gl.float32)
    return p, dlt, u, dy, bm, cm


@gluon.jit
def bwd_seq_gluon_kernel(
    u_ptr, dl_ptr, b_ptr, c_ptr, a_ptr, dskip_ptr, bias_ptr, dy_ptr, st_ptr, scr_ptr,
    du_ptr, ddl_ptr, db_ptr, dc_ptr, da_ptr, dd_ptr,
    L, H: gl.constexpr, W: gl.constexpr, DM, NSLOT,
    su_b, su_k, su_l, su_d,
    sdl_b, sdl_k, sdl_l, sdl_d,
    sb_b, sb_k, sb_l, sb_n,
    sc_b, sc_k, sc_l, sc_n,
    sdy_b, sdy_k, sdy_l, sdy_d,
    sdu_b, sdu_k, sdu_l, sdu_d,
    sddl_b, sddl_k, sddl_l, sddl_d,
    sdb_p, sdb_b, sdb_k, sdb_l, sdb_n,
    sdc_p, sdc_b, sdc_k, sdc_l, sdc_n,
    K: gl.constexpr, N: gl.constexpr, NP: gl.constexpr,
    BLOCK_L: gl.constexpr, BLOCK_D: gl.constexpr, CPS: gl.constexpr,
    CROSS: gl.constexpr, SOFTPLUS: gl.constexpr, HAS_D: gl.constexpr, HAS_BIAS: gl.constexpr,
    STAGES: gl.constexpr = 1,
):
    """Backward of one (batch, direction) and BLOCK_D channels; one warp. Segments of ``CPS * BLOCK_L`` steps from
    the end of time (a saved forward state at each start), sub-segments of ``BLOCK_L`` steps from the segment's end:
    a forward pass stores h_{t-1} of every step, a reverse pass reads them back with
    g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1}. ``STAGES`` is accepted for the Triton kernel's signature (the loads
    here are issued ahead through registers instead)."""
    gl.static_assert(CROSS and not SOFTPLUS and not HAS_BIAS, "the Gluon backward covers the pre-softplus cross scan")
    gl.static_assert(NP == 16 and BLOCK_D == 32, "the Gluon backward's layout is 16 states x 32 channels")
    # 4 x 4 tile per thread: 4 lanes along the states, 8 along the channels, channels fastest in registers
    S2: gl.constexpr = gl.BlockedLayout([4, 4], [4, 8], [1, 1], [1, 0])
    CH: gl.constexpr = gl.SliceLayout(0, S2)  # a vector over channels (delta, u, dy, du, ...)
    ST: gl.constexpr = gl.SliceLayout(1, S2)  # a vector over states (B, C, dB, dC)
    STATE: gl.constexpr = NP * BLOCK_D

    pid_bk = gl.program_id(0)
    pid_d = gl.program_id(1)
    b = (pid_bk // K).to(gl.int64)
    k = pid_bk % K
    kk = k.to(gl.int64)
    offs_d = pid_d * BLOCK_D + gl.arange(0, BLOCK_D, layout=CH)
    mask_d = offs_d < DM
    offs_n = gl.arange(0, NP, layout=ST)
    mask_n = offs_n < N
    mask_nd = gl.expand_dims(mask_n, 1) & gl.expand_dims(mask_d, 0)
    ch = k * DM + offs_d
    a_t = gl.load(a_ptr + gl.expand_dims(ch, 0) * N + gl.expand_dims(offs_n, 1), mask=mask_nd, other=0.0)
    a_t = a_t.to(gl.float32)
    a2 = a_t * LOG2E
    if HAS_D:
        dskip = gl.load(dskip_ptr + ch, mask=mask_d, other=0.0).to(gl.float32)
    else:
        dskip = gl.zeros([BLOCK_D], gl.float32, layout=CH)

    u_base = u_ptr + b * su_b + kk * su_k
    dl_base = dl_ptr + b * sdl_b + kk * sdl_k
    b_base = b_ptr + b * sb_b + kk * sb_k
    c_base = c_ptr + b * sc_b + kk * sc_k
    dy_base = dy_ptr + b * sdy_b + kk * sdy_k
    du_base = du_ptr + b * sdu_b + kk * sdu_k
    ddl_base = ddl_ptr + b * sddl_b + kk * sddl_k
    db_base = db_ptr + pid_d.to(gl.int64) * sdb_p + b * sdb_b + kk * sdb_k
    dc_base = dc_ptr + pid_d.to(gl.int64) * sdc_p + b * sdc_b + kk * sdc_k
    # saved forward states: (d, n) layout, one per segment
    st_base = st_ptr + pid_bk.to(gl.int64) * NSLOT * DM * N
    st_offs = gl.expand_dims(offs_d, 0) * N + gl.expand_dims(offs_n, 1)
    # program-private scratch: CPS sub-segment start states, then BLOCK_L states h_{t-1}; (n, d) layout, each thread
    # reading back only what it wrote
    pid_lin = pid_bk.to(gl.int64) * gl.num_programs(1) + pid_d
    scr_base = scr_ptr + pid_lin * (CPS + BLOCK_L) * STATE
    hist = scr_base + CPS * STATE
    hist_offs = gl.expand_dims(offs_n, 1) * BLOCK_D + gl.expand_dims(gl.arange(0, BLOCK_D, layout=CH), 0)

    w = gl.zeros([NP, BLOCK_D], gl.float32, layout=S2)
    da_acc = gl.zeros([NP, BLOCK_D], gl.float32, layout=S2)
    dd_acc = gl.zeros([BLOCK_D], gl.float32, layout=CH)
    SEG: gl.constexpr = CPS * BLOCK_L
    n_seg = gl.cdiv(L, SEG)
    for si in range(0, n_seg):
        s = n_seg - 1 - si
        t_lo = s * SEG
        t_hi = gl.minimum(t_lo + SEG, L)
        n_sub = gl.cdiv(t_hi - t_lo, BLOCK_L)
        h = gl.load(st_base + s * DM * N + st_offs, mask=mask_nd, other=0.0)
        if CPS > 1:
            # the states at the sub-segment starts (the last sub-segment's steps are not needed, only its start)
            for t in range(t_lo, t_lo + (n_sub - 1) * BLOCK_L):
                if (t - t_lo) % BLOCK_L == 0:
                    gl.store(scr_base + ((t - t_lo) // BLOCK_L) * STATE + hist_offs, h)
                dlt, u, bm = _fwd_rows(u_base, dl_base, b_base, t, k, L, H, W, offs_d, mask_d, offs_n, mask_n,
                                       su_l, su_d, sdl_l, sdl_d, sb_l, sb_n)
                h = gl.exp2(a2 * gl.expand_dims(dlt, 0)) * h + gl.expand_dims(bm, 1) * gl.expand_dims(dlt * u, 0)
            gl.store(scr_base + (n_sub - 1) * STATE + hist_offs, h)
        for ji in range(0, n_sub):
            j = n_sub - 1 - ji
            lo = t_lo + j * BLOCK_L
            hi = gl.minimum(lo + BLOCK_L, t_hi)
            if CPS > 1:
                h = gl.load(scr_base + j * STATE + hist_offs)
            # forward over the sub-segment, keeping h_{t-1}; rows are loaded two steps ahead (registers carried
            # through the loop: the latency of a global load is about two steps)
            dlt_1, u_1, bm_1 = _fwd_rows(u_base, dl_base, b_base, lo, k, L, H, W, offs_d, mask_d, offs_n, mask_n,
                                         su_l, su_d, sdl_l, sdl_d, sb_l, sb_n)
            dlt_2, u_2, bm_2 = _fwd_rows(u_base, dl_base, b_base, gl.minimum(lo + 1, hi - 1), k, L, H, W, offs_d,
                                         mask_d, offs_n, mask_n, su_l, su_d, sdl_l, sdl_d, sb_l, sb_n)
            for t in range(lo, hi):
                dlt = dlt_1
                u = u_1
                bm = bm_1
                dlt_1 = dlt_2
                u_1 = u_2
                bm_1 = bm_2
                dlt_2, u_2, bm_2 = _fwd_rows(u_base, dl_base, b_base, gl.minimum(t + 2, hi - 1), k, L, H, W, offs_d,
                                             mask_d, offs_n, mask_n, su_l, su_d, sdl_l, sdl_d, sb_l, sb_n)
                gl.store(hist + (t - lo) * STATE + hist_offs, h)
                h = gl.exp2(a2 * gl.expand_dims(dlt, 0)) * h + gl.expand_dims(bm, 1) * gl.expand_dims(dlt * u, 0)
            # reverse over the sub-segment; h_t (for dC_t) is the h_{t-1} read at the step after. Rows two steps
            # ahead, the h_{t-1} history (an L2 hit) one step ahead
            h_t = h
            p_1, dlt_1, u_1, dy_1, bm_1, cm_1 = _rev_rows(
                u_base, dl_base, b_base, c_base, dy_base, hi - 1, k, L, H, W, offs_d, mask_d, offs_n, mask_n,
                su_l, su_d, sdl_l, sdl_d, sb_l, sb_n, sc_l, sc_n, sdy_l, sdy_d)
            p_2, dlt_2, u_2, dy_2, bm_2, cm_2 = _rev_rows(
                u_base, dl_base, b_base, c_base, dy_base, gl.maximum(hi - 2, lo), k, L, H, W, offs_d, mask_d, offs_n,
                mask_n, su_l, su_d, sdl_l, sdl_d, sb_l, sb_n, sc_l, sc_n, sdy_l, sdy_d)
            hp_1 = gl.load(hist + (hi - 1 - lo) * STATE + hist_offs)
            for ti in range(0, hi - lo):
                p = p_1
                dlt = dlt_1
                u = u_1
                dyf = dy_1
                bm = bm_1
                cm = cm_1
                h_prev = hp_1
                p_1 = p_2
                dlt_1 = dlt_2
                u_1 = u_2
                dy_1 = dy_2
                bm_1 = bm_2
                cm_1 = cm_2
                p_2, dlt_2, u_2, dy_2, bm_2, cm_2 = _rev_rows(
                    u_base, dl_base, b_base, c_base, dy_base, gl.maximum(hi - 3 - ti, lo), k, L, H, W, offs_d,
                    mask_d, offs_n, mask_n, su_l, su_d, sdl_l, sdl_d, sb_l, sb_n, sc_l, sc_n, sdy_l, sdy_d)
                hp_1 = gl.load(hist + gl.maximum(hi - 2 - ti - lo, 0) * STATE + hist_offs)
                dy2 = gl.expand_dims(dyf, 0)
                gl.store(dc_base + p * sdc_l + offs_n * sdc_n,
                         gl.sum(h_t * dy2, axis=1).to(dc_ptr.dtype.element_ty), mask=mask_n)
                h_t = h_prev
                g = w + gl.expand_dims(cm, 1) * dy2
                da = gl.exp2(a2 * gl.expand_dims(dlt, 0))
                gb = gl.sum(g * gl.expand_dims(bm, 1), axis=0)
                gl.store(db_base + p * sdb_l + offs_n * sdb_n,
                         gl.sum(g * gl.expand_dims(dlt * u, 0), axis=1).to(db_ptr.dtype.element_ty), mask=mask_n)
                w = g * da  # the carry to step t - 1, exp(delta_t A) g_t
                x = w * h_prev  # g_t exp(delta_t A) h_{t-1}
                da_acc += x * gl.expand_dims(dlt, 0)
                d_dlt = gl.sum(x * a_t, axis=0) + gb * u
                gl.store(du_base + p * sdu_l + offs_d * sdu_d, (gb * dlt + dskip * dyf).to(du_ptr.dtype.element_ty),
                         mask=mask_d)
                gl.store(ddl_base + p * sddl_l + offs_d * sddl_d, d_dlt.to(ddl_ptr.dtype.element_ty), mask=mask_d)
                dd_acc += dyf * u
    gl.store(da_ptr + b * (K * DM * N) + gl.expand_dims(ch, 0) * N + gl.expand_dims(offs_n, 1), da_acc, mask=mask_nd)
    gl.store(dd_ptr + b * (K * DM) + ch, dd_acc, mask=mask_d)
