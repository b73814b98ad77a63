"""Numba core of the compiled PE programs (:mod:`wse_sim.fabric.compiled_flow`): the
message dependencies of :class:`wse_sim.fabric.dataflow.Dataflow` and the chunk state machine
of the ``packet`` backend's kernels (``wse_sim.timing.packet._KernelRun``) on arrays, run
inside the compiled event loop (:mod:`wse_sim.fabric._loop_core`) instead of as Python
callbacks.

Every function here is a line-by-line port of the Python method named in its docstring, and
pushes its events in the same order under the same key (the key of the event being handled,
as a Python callback would), so results are the Python path's exactly.

State ``W`` (built by :func:`wse_sim.fabric.compiled_flow.build_state`):
``(wi, wf, mi, mf, qi, qf, dep_mid, dep_off, dt_mid, dt_off, ds_node, ds_i, ds_f, ph,
pe_i, pe_f, need, avail, pidx, og0, og_mid, wm0, wm_mid, weights_at)``; the column indices
are the constants below. A packet of a message carries tag ``-(q + 1)`` (``q``: its index in
``qi``/``qf``) in the engine's packet table.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from wse_sim.fabric._compiled_core import ARRIVE, F_NOW, I_INFLIGHT, I_NPK, hpush

FLOW_DONE = 5  # event kind: a PE finished a chunk (the Python path's ``_done`` timer)

# wi: int scalars
(W_ON, W_PES_DONE, W_NPE, W_N, W_CRIT, W_HAS_W, W_WGATE_PE, W_PID, W_MSGS_DONE, W_NPK_INJ,
 W_ERR, W_MARGIN, W_LEN) = range(13)  # fmt: skip
# wf: float scalars
WF_STALL, WF_LAST_TAIL, WF_INJ, WF_EXP, WF_FWD, WF_LEN = range(6)
# mi: per message
(M_SRC, M_V, M_COLOUR, M_NP, M_PK0, M_GATES, M_FEEDS, M_NDEST, M_COMPLETE, M_DEP0, M_NDEP,
 M_DT0, M_NDT, M_DS0, M_NDS, M_LEN) = range(16)  # fmt: skip
# mf: per message
MF_SIZE, MF_S, MF_GATE_T, MF_LEN = range(4)
# qi / qf: per packet of a message
Q_PENDING, Q_SENT, Q_MID, Q_LEN = range(4)
QF_HEAD, QF_TAIL, QF_SIZE, QF_LEN = range(4)
# ds_i / ds_f: per (message, destination PE)
D_CNT, D_PH0, D_LEN = range(3)
DF_H1, DF_T1, DF_LEN = range(3)
# pe_i / pe_f: per PE
P_NEXT, P_STARTED, P_LEN = range(3)
PF_PREV, PF_CYC, PF_LEN = range(3)


@njit(cache=True, _nrt=False)
def init_pending(W):
    """Packets' pending counts as ``Dataflow.message`` sets them: one per packet dependency,
    less those packets that take no wavelet from it."""
    mi, mf, qi, qf, dep_mid, dep_off = W[2], W[3], W[4], W[5], W[6], W[7]
    for mid in range(mi.shape[0]):
        k = mi[mid, M_NP]
        q0 = mi[mid, M_PK0]
        nd = mi[mid, M_NDEP]
        S = mf[mid, MF_S]
        for j in range(k):
            qi[q0 + j, Q_PENDING] = nd
        for e in range(mi[mid, M_DEP0], mi[mid, M_DEP0] + nd):
            dsize = mf[dep_mid[e], MF_SIZE]
            offset = dep_off[e]
            for j in range(k):
                lo = j * S - offset
                if lo + qf[q0 + j, QF_SIZE] - 1 < 0 or lo > dsize - 1:
                    qi[q0 + j, Q_PENDING] -= 1


@njit(cache=True, _nrt=False)
def _send(W, S, H, I, F, P, mid, k):
    """``Dataflow._send`` and the engine's ``inject`` (static colour, RAMP or edge port)."""
    wi, wf, mi, mf, qi, qf = W[0], W[1], W[2], W[3], W[4], W[5]
    q = mi[mid, M_PK0] + k
    if mi[mid, M_GATES] > 0 or qi[q, Q_PENDING] != 0 or qi[q, Q_SENT]:
        return
    t = max(qf[q, QF_HEAD], mf[mid, MF_GATE_T], F[F_NOW])
    tail = max(qf[q, QF_TAIL], t)
    qi[q, Q_SENT] = 1
    size = qf[q, QF_SIZE]
    p = I[I_NPK]
    I[I_NPK] = p + 1
    P[0][p] = wi[W_PID]
    wi[W_PID] += 1
    P[1][p] = mi[mid, M_COLOUR]
    P[2][p] = size
    P[3][p] = mi[mid, M_SRC]
    P[4][p] = -1
    P[5][p] = t
    P[6][p] = 0
    P[7][p] = -(q + 1)
    v = mi[mid, M_V]
    S[3][v] += size  # vocc
    I[I_INFLIGHT] += 1
    wi[W_NPK_INJ] += 1
    wf[WF_INJ] += size
    wf[WF_EXP] += size * mi[mid, M_NDS]
    hpush(H, I, t, ARRIVE, v, p, tail if tail >= t else t)


@njit(cache=True, _nrt=False)
def _try_all(W, S, H, I, F, P, mid):
    """``Dataflow._try_all``."""
    mi, qi = W[2], W[4]
    q0 = mi[mid, M_PK0]
    for k in range(mi[mid, M_NP]):
        if qi[q0 + k, Q_PENDING] == 0:
            _send(W, S, H, I, F, P, mid, k)


@njit(cache=True, _nrt=False)
def open_gate(W, S, H, I, F, P, mid, t):
    """``Dataflow.open_gate``."""
    mi, mf = W[2], W[3]
    mi[mid, M_GATES] -= 1
    if t > mf[mid, MF_GATE_T]:
        mf[mid, MF_GATE_T] = t
    if mi[mid, M_GATES] == 0:
        _try_all(W, S, H, I, F, P, mid)


@njit(cache=True, _nrt=False)
def _dep_packet(W, S, H, I, F, P, mid, dep, kd, h, t, offset, ph0):
    """``Dataflow._dep_packet`` (packet dependency): packet ``kd`` of ``dep`` arrived (head
    ``h``, tail ``t``) at the source of ``mid``; ``ph0``: where that (message, PE)'s packet
    heads are kept."""
    wf, mi, mf, qi, qf, ph = W[1], W[2], W[3], W[4], W[5], W[13]
    fwd = wf[WF_FWD]
    S_ = mf[mid, MF_S]
    Sd = mf[dep, MF_S]
    nd = mi[dep, M_NP]
    nk = mi[mid, M_NP]
    q0 = mi[mid, M_PK0]
    dsize = mf[dep, MF_SIZE]
    k_lo = max(int((kd * Sd + offset) // S_) - 1, 0)
    if kd == nd - 1:
        k_hi = nk
    else:
        k_hi = min(int(((kd + 1) * Sd + offset) // S_) + 2, nk)
    for k in range(k_lo, k_hi):
        q = q0 + k
        if qi[q, Q_SENT]:
            continue
        lo = k * S_ - offset
        hi = k * S_ + qf[q, QF_SIZE] - 1 - offset
        if hi < 0 or lo > dsize - 1:
            continue
        last = min(int(max(hi, 0.0) // Sd), nd - 1)
        if last != kd:
            continue
        first = min(int(max(lo, 0.0) // Sd), nd - 1)
        hf = ph[ph0 + first]
        if np.isnan(hf):
            hf = h
        qi[q, Q_PENDING] -= 1
        hh = hf + fwd
        tt = t + fwd
        if hh > qf[q, QF_HEAD]:
            qf[q, QF_HEAD] = hh
        if tt > qf[q, QF_TAIL]:
            qf[q, QF_TAIL] = tt
        if qi[q, Q_PENDING] == 0:
            _send(W, S, H, I, F, P, mid, k)


@njit(cache=True, _nrt=False)
def try_pe(W, S, H, I, F, P, pi, now):
    """``_KernelRun._try``: start PE ``pi``'s next chunk if its inputs are there."""
    wi, wf, pe_i, pe_f, need, avail, weights_at = W[0], W[1], W[14], W[15], W[16], W[17], W[23]
    i = pe_i[pi, P_NEXT]
    if i >= wi[W_N] or pe_i[pi, P_STARTED] or need[pi, i] > 0:
        return
    ready = pe_f[pi, PF_PREV]
    t = max(ready, avail[pi, i], now)
    pe_i[pi, P_STARTED] = 1
    if pi == wi[W_CRIT] and wi[W_HAS_W]:
        w = weights_at[i]
        if w > ready:
            wf[WF_STALL] += min(w, t) - ready
    hpush(H, I, t + pe_f[pi, PF_CYC], FLOW_DONE, pi, i, 0.0)


@njit(cache=True, _nrt=False)
def chunk_done(W, S, H, I, F, P, pi, i):
    """``_KernelRun._done``: PE ``pi`` finished chunk ``i`` (event ``FLOW_DONE``)."""
    wi, pe_i, pe_f, og0, og_mid = W[0], W[14], W[15], W[19], W[20]
    t = F[F_NOW]
    pe_f[pi, PF_PREV] = t
    pe_i[pi, P_STARTED] = 0
    g = pi * wi[W_N] + i
    for e in range(og0[g], og0[g + 1]):
        open_gate(W, S, H, I, F, P, og_mid[e], t)
    pe_i[pi, P_NEXT] = i + 1
    if i + 1 < wi[W_N]:
        try_pe(W, S, H, I, F, P, pi, t)
    else:
        wi[W_PES_DONE] += 1


@njit(cache=True, _nrt=False)
def deliver(W, S, H, I, F, P, n, q, th, tt):
    """``Dataflow._on_deliver`` and ``_KernelRun._on_message``: packet ``q`` of a message
    reached the PE of router ``n``, head at ``th``, tail at ``tt``."""
    wi, wf, mi, qi, qf = W[0], W[1], W[2], W[4], W[5]
    ds_node, ds_i, ds_f, ph = W[10], W[11], W[12], W[13]
    mid = qi[q, Q_MID]
    k = q - mi[mid, M_PK0]
    lo = mi[mid, M_DS0]
    hi = lo + mi[mid, M_NDS]
    while lo < hi:  # the destination's slot (sorted by router)
        md = (lo + hi) >> 1
        if ds_node[md] < n:
            lo = md + 1
        else:
            hi = md
    s = lo
    if s >= mi[mid, M_DS0] + mi[mid, M_NDS] or ds_node[s] != n:
        wi[W_ERR] = 1
        return
    if ds_i[s, D_CNT] == 0:
        ds_f[s, DF_H1] = th
        ds_f[s, DF_T1] = tt
    ds_i[s, D_CNT] += 1
    if th < ds_f[s, DF_H1]:
        ds_f[s, DF_H1] = th
    if tt > ds_f[s, DF_T1]:
        ds_f[s, DF_T1] = tt
    ph0 = ds_i[s, D_PH0]
    if ph0 >= 0:
        ph[ph0 + k] = th
    dt_mid, dt_off = W[8], W[9]
    for e in range(mi[mid, M_DT0], mi[mid, M_DT0] + mi[mid, M_NDT]):
        d = dt_mid[e]
        if mi[d, M_SRC] == n:
            _dep_packet(W, S, H, I, F, P, d, mid, k, th, tt, dt_off[e], ph0)
    if ds_i[s, D_CNT] == mi[mid, M_NP]:
        mi[mid, M_COMPLETE] += 1
        if mi[mid, M_COMPLETE] == mi[mid, M_NDEST]:
            wi[W_MSGS_DONE] += 1
        # _KernelRun._on_message
        tail = ds_f[s, DF_T1]
        if tail > wf[WF_LAST_TAIL]:
            wf[WF_LAST_TAIL] = tail
        chunk = mi[mid, M_FEEDS]
        if chunk < 0:
            return
        pi = W[18][n]
        if pi < 0:
            return
        need, avail, pe_i = W[16], W[17], W[14]
        need[pi, chunk] -= 1
        if tail > avail[pi, chunk]:
            avail[pi, chunk] = tail
        if pe_i[pi, P_NEXT] == chunk and not pe_i[pi, P_STARTED]:
            try_pe(W, S, H, I, F, P, pi, F[F_NOW])


@njit(cache=True, _nrt=False)
def begin(W, S, H, I, F, P):
    """The sends ``Dataflow.message`` makes as each ungated message is declared."""
    mi = W[2]
    for mid in range(mi.shape[0]):
        if mi[mid, M_GATES] == 0:
            _try_all(W, S, H, I, F, P, mid)


@njit(cache=True, _nrt=False)
def weights_arrived(W, S, H, I, F, P, i, t):
    """``_KernelRun.weights_arrived``: chunk ``i`` of the weights is on the wafer at ``t``."""
    wi, pe_i, need, avail, wm0, wm_mid, weights_at = (
        W[0], W[14], W[16], W[17], W[21], W[22], W[23])  # fmt: skip
    weights_at[i] = t
    for e in range(wm0[i], wm0[i + 1]):
        open_gate(W, S, H, I, F, P, wm_mid[e], t)
    if wi[W_WGATE_PE]:
        for pi in range(wi[W_NPE]):
            need[pi, i] -= 1
            if t > avail[pi, i]:
                avail[pi, i] = t
            if pe_i[pi, P_NEXT] == i and not pe_i[pi, P_STARTED]:
                try_pe(W, S, H, I, F, P, pi, t)


@njit(cache=True, _nrt=False)
def start(W, S, H, I, F, P, t0):
    """``_KernelRun.start``."""
    for pi in range(W[0][W_NPE]):
        try_pe(W, S, H, I, F, P, pi, t0)
