"""Sequential backward of the fused SS2D scan written in Gluon (Triton's layout-explicit dialect; needs a Triton
with ``triton.experimental.gluon``: 3.6 on the H200 machine, 3.9 here). The default backward where it applies
(``ScanConfig.bwd_gluon``); ``ss2d_triton`` falls back to the Triton kernel where Gluon is missing, in the interpreter,
and where this kernel does not compile (Gluon's API moves between Triton releases; the two names that moved between
3.6 and 3.9 are looked up below).

Same arguments, maths and results as ``bwd_seq_kernel`` (``ss2d_triton_seq_kernels``) for its default path: delta
already softplus'd (``pre_softplus``), no bias in the kernel, the four cross-scan directions, 16 states, 32 channels
per one-warp program. The difference is the register layout, which Triton derives from the h_{t-1} history's memory
order: it gives each thread 4 states of 4 channels 8 apart, so that every row of delta / u / dy costs 4 scalar
shared-memory reads after its asynchronous copy, and every stored vector (du, ddelta, dB, dC) a round trip through
shared memory and a barrier. Here the layout is stated: each thread holds a 4 x 4 tile, 4 consecutive states of 4
consecutive channels (4 lanes along the states, 8 along the channels), so

* a row of channels (delta, u, dy) or of states (B, C) is one 16-byte asynchronous copy and one 16-byte shared-memory
  read per thread, through rings of ``STAGES`` slots filled ``STAGES - 1`` steps ahead (as Triton's pipelined loops);
* the h_{t-1} history (global scratch, each thread writing and reading back its own tile) comes back through the
  same ring: 4 16-byte copies and reads per thread and step;
* du / ddelta / dB / dC are stored from the layout the sums leave them in (no conversion), one barrier per step.

Per time step at 64 x 64 (sm_90 SASS, ``python scripts/triton_kernel_info.py --loops``) that is about as many
instructions as the Triton kernel (134 + 390-400 against 143 + 410) but 12 + 64 memory / shuffle / barrier instructions
against 18 + 85. Measured on the H200 (docs/benchmarks.md, eleventh session; bf16, batch 32): 29.3 instead of 31.3 ms
for the backward kernels of the network's 15 cores, faster at each of the four stage shapes (4.68 / 2.27 / 1.09 / 0.46
against 4.98 / 2.42 / 1.15 / 0.51 ms). A first version that loaded the rows straight into registers, two steps ahead,
was 30% slower than the Triton kernel (the loads' latency showed): the asynchronous rings are what make this one win.

Both kernels take the B / C rows' strides as constants and the rows from a 16-byte aligned base plus a constant offset
(``B_OFF`` / ``C_OFF``; ``ss2d_triton._gluon_row_args``): in x_dbl (B, L, K, R + 2N) the rows start R or R + N elements
into rows of R + 2N, and with runtime strides the compiler could only prove 4-byte alignment, so each row took four
4-byte copies per thread; now two 8-byte (R = 6) or one 16-byte copy. With ``HIST_SMEM`` the backward keeps a
sub-segment's h_{t-1} history in shared memory (``bwd_block_l`` x 2 KB) instead of global scratch. Measured on the H200
(thirteenth session, bf16, batch 32): the backward kernels of the 15 cores 24.3 instead of 29.2 ms, the forward's 6.95
instead of 7.34 ms.
"""

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy as cp

# global -> shared asynchronous copy (cp.async): ``async_copy_global_to_shared`` up to Triton 3.6, ``async_load`` since
_async_copy = getattr(cp, "async_load", None) or cp.async_copy_global_to_shared
# a barrier of the program's threads: ``thread_barrier`` up to Triton 3.6, ``barrier`` since
_barrier = getattr(gl, "thread_barrier", None) or gl.barrier

LOG2E = gl.constexpr(1.4426950408889634)  # exp(x A) = exp2(x A log2 e)


@gluon.jit
def _pos(t, k, L, H: gl.constexpr, W: gl.constexpr):
    # pixel (row-major) read at time t by cross-scan direction k (0: rows, 1: columns, 2 / 3: their reverses),
    # as ``_time_to_pos`` with CROSS; integer arithmetic on scalars instead of selects
    rev = (k >= 2).to(gl.int32)
    tt = t + rev * (L - 1 - 2 * t)
    return tt + (k % 2) * ((tt % H) * W + tt // H - tt)


@gluon.jit
def _issue_fwd_rows(dl_s, u_s, b_s, slot, u_base, dl_base, b_base, t, k, L, H: gl.constexpr, W: gl.constexpr,
                    offs_d, mask_d, offs_n, mask_n, su_l, su_d, sdl_l, sdl_d, sb_l, sb_n):
    # asynchronous copies of step t's delta, u (channel rows) and B (state row) into ring slot ``slot``: one group
    p = _pos(t, k, L, H, W)
    _async_copy(dl_s.index(slot), dl_base + p * sdl_l + offs_d * sdl_d, mask=mask_d)
    _async_copy(u_s.index(slot), u_base + p * su_l + offs_d * su_d, mask=mask_d)
    _async_copy(b_s.index(slot), b_base + p * sb_l + offs_n * sb_n, mask=mask_n)
    cp.commit_group()


@gluon.jit
def _issue_rev_rows(dl_s, u_s, b_s, dy_s, c_s, h_s, slot, u_base, dl_base, b_base, c_base, dy_base, hist, t, lo, k, L,
                    H: gl.constexpr, W: gl.constexpr, offs_d, mask_d, offs_n, mask_n, hist_offs, STATE: gl.constexpr,
                    su_l, su_d, sdl_l, sdl_d, sb_l, sb_n, sc_l, sc_n, sdy_l, sdy_d, HIST_SMEM: gl.constexpr):
    # asynchronous copies of what the reverse pass reads for step t (delta, u, dy, B, C and, from global scratch,
    # h_{t-1}): one group. The h_{t-1} copy has the state's own layout: each thread copies the elements it stored (and
    # will read)
    p = _pos(t, k, L, H, W)
    _async_copy(dl_s.index(slot), dl_base + p * sdl_l + offs_d * sdl_d, mask=mask_d)
    _async_copy(u_s.index(slot), u_base + p * su_l + offs_d * su_d, mask=mask_d)
    _async_copy(dy_s.index(slot), dy_base + p * sdy_l + offs_d * sdy_d, mask=mask_d)
    _async_copy(b_s.index(slot), b_base + p * sb_l + offs_n * sb_n, mask=mask_n)
    _async_copy(c_s.index(slot), c_base + p * sc_l + offs_n * sc_n, mask=mask_n)
    if not HIST_SMEM:
        _async_copy(h_s.index(slot), hist + (t - lo) * STATE + hist_offs)
    cp.commit_group()


@gluon.jit
def _forward_pass(h, a2, t0, t1, dl_s, u_s, b_s, u_base, dl_base, b_base, k, L, H: gl.constexpr, W: gl.constexpr,
                  offs_d, mask_d, offs_n, mask_n, su_l, su_d, sdl_l, sdl_d, sb_l, sb_n, out, hist_offs,
                  EVERY: gl.constexpr, STATE: gl.constexpr, STAGES: gl.constexpr, CH: gl.constexpr,
                  ST: gl.constexpr, out_s, TO_SMEM: gl.constexpr):
    """The state from h over steps [t0, t1) (t1 > t0), storing it before every ``EVERY``-th step at ``out`` (slot
    (t - t0) / EVERY), or with ``TO_SMEM`` into slot t - t0 of the shared-memory buffer ``out_s``. Rows come through a
    ``STAGES``-slot ring of asynchronous copies, ``STAGES - 1`` steps ahead."""
    for q in gl.static_range(STAGES - 1):
        _issue_fwd_rows(dl_s, u_s, b_s, q, u_base, dl_base, b_base, gl.minimum(t0 + q, t1 - 1), k, L, H, W,
                        offs_d, mask_d, offs_n, mask_n, su_l, su_d, sdl_l, sdl_d, sb_l, sb_n)
    for t in range(t0, t1):
        i = t - t0
        cp.wait_group(STAGES - 2)  # step t's copies are done (later steps' may still be in flight)
        _barrier()  # ... for every lane; and every lane is done reading the slot refilled next
        _issue_fwd_rows(dl_s, u_s, b_s, (i + STAGES - 1) % STAGES, u_base, dl_base, b_base,
                        gl.minimum(t + STAGES - 1, t1 - 1), k, L, H, W, offs_d, mask_d, offs_n, mask_n,
                        su_l, su_d, sdl_l, sdl_d, sb_l, sb_n)
        slot = i % STAGES
        dlt = dl_s.index(slot).load(CH).to(gl.float32)
        u = u_s.index(slot).load(CH).to(gl.float32)
        bm = b_s.index(slot).load(ST).to(gl.float32)
        if TO_SMEM:
            out_s.index(i).store(h)  # each thread stores (and later reads back) its own tile: no barrier
        elif i % EVERY == 0:
            gl.store(out + (i // EVERY) * STATE + hist_offs, h)
        h = gl.exp2(a2 * gl.expand_dims(dlt, 0)) * h + gl.expand_dims(bm, 1) * gl.expand_dims(dlt * u, 0)
    cp.wait_group(0)
    _barrier()  # the ring is free for the next pass
    return h


@gluon.jit
def _program_setup(a_ptr, dskip_ptr, DM, K: gl.constexpr, N: gl.constexpr, NP: gl.constexpr, BLOCK_D: gl.constexpr,
                   HAS_D: gl.constexpr, CH: gl.constexpr, ST: gl.constexpr):
    # this program's (batch, direction) and channel block, index vectors and masks in the tile's layouts, A as
    # (states, channels) and the D skip, fp32
    pid_bk = gl.program_id(0)
    pid_d = gl.program_id(1)
    b = (pid_bk // K).to(gl.int64)
    k = pid_bk % K
    offs_d = pid_d * BLOCK_D + gl.arange(0, BLOCK_D, layout=CH)
    mask_d = offs_d < DM
    offs_n = gl.arange(0, NP, layout=ST)
    mask_n = offs_n < N
    mask_nd = gl.expand_dims(mask_n, 1) & gl.expand_dims(mask_d, 0)
    ch = k * DM + offs_d
    a_t = gl.load(a_ptr + gl.expand_dims(ch, 0) * N + gl.expand_dims(offs_n, 1), mask=mask_nd, other=0.0)
    if HAS_D:
        dskip = gl.load(dskip_ptr + ch, mask=mask_d, other=0.0).to(gl.float32)
    else:
        dskip = gl.zeros([BLOCK_D], gl.float32, layout=CH)
    return pid_bk, pid_d, b, k, offs_d, mask_d, offs_n, mask_n, mask_nd, ch, a_t.to(gl.float32), dskip


@gluon.jit
def _issue_scan_rows(dl_s, u_s, b_s, c_s, slot, u_base, dl_base, b_base, c_base, t, k, L, H: gl.constexpr,
                     W: gl.constexpr, offs_d, mask_d, offs_n, mask_n, su_l, su_d, sdl_l, sdl_d, sb_l, sb_n, sc_l, sc_n):
    # asynchronous copies of what the forward scan reads at step t (delta, u, B, C) into ring slot ``slot``: one group
    p = _pos(t, k, L, H, W)
    _async_copy(dl_s.index(slot), dl_base + p * sdl_l + offs_d * sdl_d, mask=mask_d)
    _async_copy(u_s.index(slot), u_base + p * su_l + offs_d * su_d, mask=mask_d)
    _async_copy(b_s.index(slot), b_base + p * sb_l + offs_n * sb_n, mask=mask_n)
    _async_copy(c_s.index(slot), c_base + p * sc_l + offs_n * sc_n, mask=mask_n)
    cp.commit_group()


@gluon.jit
def fwd_seq_gluon_kernel(
    u_ptr, dl_ptr, b_ptr, c_ptr, a_ptr, dskip_ptr, bias_ptr, y_ptr, st_ptr,
    L, H: gl.constexpr, W: gl.constexpr, DM, NSLOT,
    su_b, su_k, su_l, su_d,
    sdl_b, sdl_k, sdl_l, sdl_d,
    sb_b: gl.constexpr, sb_k: gl.constexpr, sb_l: gl.constexpr, sb_n,
    sc_b: gl.constexpr, sc_k: gl.constexpr, sc_l: gl.constexpr, sc_n,
    sy_b, sy_k, sy_l, sy_d,
    K: gl.constexpr, N: gl.constexpr, NP: gl.constexpr,
    BLOCK_L: gl.constexpr, BLOCK_D: gl.constexpr, CPS: gl.constexpr,
    CROSS: gl.constexpr, SOFTPLUS: gl.constexpr, HAS_D: gl.constexpr, HAS_BIAS: gl.constexpr,
    SAVE_STATES: gl.constexpr, STAGES: gl.constexpr = 4, B_OFF: gl.constexpr = 0, C_OFF: gl.constexpr = 0,
):
    """Forward scan of one (batch, direction) and BLOCK_D channels, ``BLOCK_D / 32`` warps (the arguments and
    results of ``fwd_seq_kernel``): y_t = C_t h_t + D u_t with h_t = exp(delta_t A) h_{t-1} + delta_t B_t u_t, the
    state saved every ``CPS * BLOCK_L`` steps and at the end (``SAVE_STATES``). Each thread holds 4 consecutive states
    of 4 consecutive channels (as the backward); the rows come through ``STAGES``-slot rings of asynchronous copies;
    y's sum over the states stays inside a warp (two shuffle rounds)."""
    gl.static_assert(CROSS and not SOFTPLUS and not HAS_BIAS, "the Gluon forward covers the pre-softplus cross scan")
    gl.static_assert(NP == 16 and BLOCK_D % 32 == 0, "the Gluon forward's layout is 16 states x 32 channels per warp")
    gl.static_assert(STAGES >= 2, "the rings need a slot being read and one being filled")
    WARPS: gl.constexpr = BLOCK_D // 32
    S2: gl.constexpr = gl.BlockedLayout([4, 4], [4, 8], [1, WARPS], [1, 0])
    CH: gl.constexpr = gl.SliceLayout(0, S2)
    ST: gl.constexpr = gl.SliceLayout(1, S2)

    pid_bk, pid_d, b, k, offs_d, mask_d, offs_n, mask_n, mask_nd, ch, a_t, dskip = _program_setup(
        a_ptr, dskip_ptr, DM, K, N, NP, BLOCK_D, HAS_D, CH, ST)
    kk = k.to(gl.int64)
    a2 = a_t * LOG2E
    u_base = u_ptr + b * su_b + kk * su_k
    dl_base = dl_ptr + b * sdl_b + kk * sdl_k
    b_base = b_ptr + B_OFF + b * sb_b + kk * sb_k
    c_base = c_ptr + C_OFF + b * sc_b + kk * sc_k
    y_base = y_ptr + b * sy_b + kk * sy_k
    # saved states: (d, n) layout, one per segment start and one at the end
    st_base = st_ptr + pid_bk.to(gl.int64) * NSLOT * DM * N
    st_offs = gl.expand_dims(offs_d, 0) * N + gl.expand_dims(offs_n, 1)

    R1: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
    dl_s = gl.allocate_shared_memory(dl_ptr.dtype.element_ty, [STAGES, BLOCK_D], R1)
    u_s = gl.allocate_shared_memory(u_ptr.dtype.element_ty, [STAGES, BLOCK_D], R1)
    b_s = gl.allocate_shared_memory(b_ptr.dtype.element_ty, [STAGES, NP], R1)
    c_s = gl.allocate_shared_memory(c_ptr.dtype.element_ty, [STAGES, NP], R1)
    SEG: gl.constexpr = CPS * BLOCK_L

    h = gl.zeros([NP, BLOCK_D], gl.float32, layout=S2)
    for q in gl.static_range(STAGES - 1):
        _issue_scan_rows(dl_s, u_s, b_s, c_s, q, u_base, dl_base, b_base, c_base, gl.minimum(q, L - 1), k, L, H, W,
                         offs_d, mask_d, offs_n, mask_n, su_l, su_d, sdl_l, sdl_d, sb_l, sb_n, sc_l, sc_n)
    for t in range(0, L):
        cp.wait_group(STAGES - 2)  # step t's copies are done (later steps' may still be in flight)
        _barrier()  # ... for every lane; and every lane is done reading the slot refilled next
        _issue_scan_rows(dl_s, u_s, b_s, c_s, (t + STAGES - 1) % STAGES, u_base, dl_base, b_base, c_base,
                         gl.minimum(t + STAGES - 1, L - 1), k, L, H, W, offs_d, mask_d, offs_n, mask_n,
                         su_l, su_d, sdl_l, sdl_d, sb_l, sb_n, sc_l, sc_n)
        if SAVE_STATES:
            if t % SEG == 0:
                gl.store(st_base + (t // SEG) * DM * N + st_offs, h, mask=mask_nd)
        slot = t % STAGES
        dlt = dl_s.index(slot).load(CH).to(gl.float32)
        u = u_s.index(slot).load(CH).to(gl.float32)
        bm = b_s.index(slot).load(ST).to(gl.float32)
        cm = c_s.index(slot).load(ST).to(gl.float32)
        h = gl.exp2(a2 * gl.expand_dims(dlt, 0)) * h + gl.expand_dims(bm, 1) * gl.expand_dims(dlt * u, 0)
        y = gl.sum(h * gl.expand_dims(cm, 1), axis=0) + dskip * u
        gl.store(y_base + _pos(t, k, L, H, W) * sy_l + offs_d * sy_d, y.to(y_ptr.dtype.element_ty), mask=mask_d)
    cp.wait_group(0)
    if SAVE_STATES:
        gl.store(st_base + (NSLOT - 1) * DM * N + st_offs, h, mask=mask_nd)


@gluon.jit
def bwd_seq_gluon_kernel(
    u_ptr, dl_ptr, b_ptr, c_ptr, a_ptr, dskip_ptr, bias_ptr, dy_ptr, st_ptr, scr_ptr,
    du_ptr, ddl_ptr, db_ptr, dc_ptr, da_ptr, dd_ptr,
    L, H: gl.constexpr, W: gl.constexpr, DM, NSLOT,
    su_b, su_k, su_l, su_d,
    sdl_b, sdl_k, sdl_l, sdl_d,
    sb_b: gl.constexpr, sb_k: gl.constexpr, sb_l: gl.constexpr, sb_n,
    sc_b: gl.constexpr, sc_k: gl.constexpr, sc_l: gl.constexpr, sc_n,
    sdy_b, sdy_k, sdy_l, sdy_d,
    sdu_b, sdu_k, sdu_l, sdu_d,
    sddl_b, sddl_k, sddl_l, sddl_d,
    sdb_p, sdb_b, sdb_k, sdb_l, sdb_n,
    sdc_p, sdc_b, sdc_k, sdc_l, sdc_n,
    K: gl.constexpr, N: gl.constexpr, NP: gl.constexpr,
    BLOCK_L: gl.constexpr, BLOCK_D: gl.constexpr, CPS: gl.constexpr,
    CROSS: gl.constexpr, SOFTPLUS: gl.constexpr, HAS_D: gl.constexpr, HAS_BIAS: gl.constexpr,
    STAGES: gl.constexpr = 4, HIST_SMEM: gl.constexpr = False, B_OFF: gl.constexpr = 0, C_OFF: gl.constexpr = 0,
):
    """Backward of one (batch, direction) and BLOCK_D channels; one warp. Segments of ``CPS * BLOCK_L`` steps from
    the end of time (a saved forward state at each start), sub-segments of ``BLOCK_L`` steps from the segment's end:
    a forward pass stores h_{t-1} of every step, a reverse pass reads them back with
    g_t = C_t dy_t + exp(delta_{t+1} A) g_{t+1}. ``STAGES`` (>= 2) slots per ring of asynchronous copies (the
    Triton kernel's ``tl.range(num_stages=STAGES)``)."""
    gl.static_assert(CROSS and not SOFTPLUS and not HAS_BIAS, "the Gluon backward covers the pre-softplus cross scan")
    gl.static_assert(NP == 16 and BLOCK_D == 32, "the Gluon backward's layout is 16 states x 32 channels")
    gl.static_assert(STAGES >= 2, "the rings need a slot being read and one being filled")
    # 4 x 4 tile per thread: 4 lanes along the states, 8 along the channels, channels fastest in registers
    S2: gl.constexpr = gl.BlockedLayout([4, 4], [4, 8], [1, 1], [1, 0])
    CH: gl.constexpr = gl.SliceLayout(0, S2)  # a vector over channels (delta, u, dy, du, ...)
    ST: gl.constexpr = gl.SliceLayout(1, S2)  # a vector over states (B, C, dB, dC)
    STATE: gl.constexpr = NP * BLOCK_D

    pid_bk, pid_d, b, k, offs_d, mask_d, offs_n, mask_n, mask_nd, ch, a_t, dskip = _program_setup(
        a_ptr, dskip_ptr, DM, K, N, NP, BLOCK_D, HAS_D, CH, ST)
    kk = k.to(gl.int64)
    a2 = a_t * LOG2E

    u_base = u_ptr + b * su_b + kk * su_k
    dl_base = dl_ptr + b * sdl_b + kk * sdl_k
    b_base = b_ptr + B_OFF + b * sb_b + kk * sb_k
    c_base = c_ptr + C_OFF + b * sc_b + kk * sc_k
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
    if HIST_SMEM:
        scr_base = scr_ptr + pid_lin * CPS * STATE  # the history is in shared memory
    else:
        scr_base = scr_ptr + pid_lin * (CPS + BLOCK_L) * STATE
    hist = scr_base + CPS * STATE
    hist_offs = gl.expand_dims(offs_n, 1) * BLOCK_D + gl.expand_dims(gl.arange(0, BLOCK_D, layout=CH), 0)

    # rings of STAGES slots for the asynchronous copies of the per-step rows and of the h_{t-1} history
    R1: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [0])
    R2: gl.constexpr = gl.SwizzledSharedLayout(1, 1, 1, [1, 0])
    dl_s = gl.allocate_shared_memory(dl_ptr.dtype.element_ty, [STAGES, BLOCK_D], R1)
    u_s = gl.allocate_shared_memory(u_ptr.dtype.element_ty, [STAGES, BLOCK_D], R1)
    dy_s = gl.allocate_shared_memory(dy_ptr.dtype.element_ty, [STAGES, BLOCK_D], R1)
    b_s = gl.allocate_shared_memory(b_ptr.dtype.element_ty, [STAGES, NP], R1)
    c_s = gl.allocate_shared_memory(c_ptr.dtype.element_ty, [STAGES, NP], R1)
    if HIST_SMEM:
        # the sub-segment's h_{t-1} history in shared memory (BLOCK_L x 2 KB): no global scratch traffic for it
        h_s = gl.allocate_shared_memory(gl.float32, [BLOCK_L, NP, BLOCK_D], R2)
    else:
        h_s = gl.allocate_shared_memory(gl.float32, [STAGES, NP, BLOCK_D], R2)

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
            if n_sub > 1:
                h = _forward_pass(h, a2, t_lo, t_lo + (n_sub - 1) * BLOCK_L, dl_s, u_s, b_s, u_base, dl_base, b_base,
                                  k, L, H, W, offs_d, mask_d, offs_n, mask_n, su_l, su_d, sdl_l, sdl_d, sb_l, sb_n,
                                  scr_base, hist_offs, BLOCK_L, STATE, STAGES, CH, ST, h_s, False)
            gl.store(scr_base + (n_sub - 1) * STATE + hist_offs, h)
        for ji in range(0, n_sub):
            j = n_sub - 1 - ji
            lo = t_lo + j * BLOCK_L
            hi = gl.minimum(lo + BLOCK_L, t_hi)
            if CPS > 1:
                h = gl.load(scr_base + j * STATE + hist_offs)
            # forward over the sub-segment, keeping h_{t-1} of every step
            h = _forward_pass(h, a2, lo, hi, dl_s, u_s, b_s, u_base, dl_base, b_base, k, L, H, W, offs_d, mask_d,
                              offs_n, mask_n, su_l, su_d, sdl_l, sdl_d, sb_l, sb_n, hist, hist_offs, 1, STATE, STAGES,
                              CH, ST, h_s, HIST_SMEM)
            # reverse over the sub-segment; h_t (for dC_t) is the h_{t-1} read at the step after
            h_t = h
            for q in gl.static_range(STAGES - 1):
                _issue_rev_rows(dl_s, u_s, b_s, dy_s, c_s, h_s, q, u_base, dl_base, b_base, c_base, dy_base, hist,
                                gl.maximum(hi - 1 - q, lo), lo, k, L, H, W, offs_d, mask_d, offs_n, mask_n, hist_offs,
                                STATE, su_l, su_d, sdl_l, sdl_d, sb_l, sb_n, sc_l, sc_n, sdy_l, sdy_d, HIST_SMEM)
            for ti in range(0, hi - lo):
                t = hi - 1 - ti
                cp.wait_group(STAGES - 2)
                _barrier()
                _issue_rev_rows(dl_s, u_s, b_s, dy_s, c_s, h_s, (ti + STAGES - 1) % STAGES, u_base, dl_base, b_base,
                                c_base, dy_base, hist, gl.maximum(t - (STAGES - 1), lo), lo, k, L, H, W, offs_d, mask_d,
                                offs_n, mask_n, hist_offs, STATE, su_l, su_d, sdl_l, sdl_d, sb_l, sb_n, sc_l, sc_n,
                                sdy_l, sdy_d, HIST_SMEM)
                slot = ti % STAGES
                p = _pos(t, k, L, H, W)
                dlt = dl_s.index(slot).load(CH).to(gl.float32)
                u = u_s.index(slot).load(CH).to(gl.float32)
                dyf = dy_s.index(slot).load(CH).to(gl.float32)
                bm = b_s.index(slot).load(ST).to(gl.float32)
                cm = c_s.index(slot).load(ST).to(gl.float32)
                if HIST_SMEM:
                    h_prev = h_s.index(t - lo).load(S2)
                else:
                    h_prev = h_s.index(slot).load(S2)
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
            cp.wait_group(0)
            _barrier()
    gl.store(da_ptr + b * (K * DM * N) + gl.expand_dims(ch, 0) * N + gl.expand_dims(offs_n, 1), da_acc, mask=mask_nd)
    gl.store(dd_ptr + b * (K * DM) + ch, dd_acc, mask=mask_d)
