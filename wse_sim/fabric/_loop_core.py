"""The compiled event loop: the handlers of :mod:`wse_sim.fabric._compiled_core` (the
fabric) and of :mod:`wse_sim.fabric._flow_core` (PE programs run in the loop, when a flow state
is on) dispatched in ``(time, key)`` order; codes and ordering: see ``_compiled_core``."""

from __future__ import annotations

from numba import njit

from wse_sim.fabric import _flow_core as fl
from wse_sim.fabric._compiled_core import (
    ARRIVE,
    CALL,
    DEADLOCK_CHECK,
    DELIVER,
    DONE,
    ERR_EDGE,
    ERR_NORULE,
    F_LAST,
    F_NOW,
    F_WDELIV,
    GROW,
    I_CURJ,
    I_CURP,
    I_EVENTS,
    I_FREE,
    I_HN,
    I_INFLIGHT,
    I_MINP,
    I_NLOG,
    I_NPEND,
    I_NPK,
    I_NRELAY,
    I_PDELIV,
    I_PROC,
    I_WANT,
    KEY_BITS,
    PENDING,
    POP,
    PORT,
    _arb,
    _head_ready,
    _release,
    _settle,
    flush,
    hpop,
)


@njit(cache=True, _nrt=False)
def run_loop(until, limit, S, H, I, F, P, Q, R, Rl, X, T, L, D, caps, ports, W):
    """Process events with time < ``until``; see ``_compiled_core``'s docstring for the
    codes. ``W``: the flow state (:mod:`wse_sim.fabric._flow_core`; its ``W_ON`` 0: none)."""
    (vq_head, vq_tail, vq_len, vocc, lazy_t, lazy_list, lazy_pos, en_pkt, en_tail, en_left,
     en_lt, en_next, pk_size, node_occ, C) = S
    ht, hk, hkind, ha, hp, hx = H
    lat_log, deliv_log, deliv_size = L
    pd_P, pd_kind, pd_a, pd_pkt, pd_th, pd_tt = D
    pwake = X[1]
    vup = Q[5]
    rq_len = R[1]
    pk_tinj = P[5]
    heap_cap, pk_cap, log_cap, pend_cap, en_cap = caps
    wi = W[0]
    flow_on = wi[fl.W_ON] != 0
    margin = wi[fl.W_MARGIN] if flow_on else 0
    pk_tag = P[7]
    while I[I_HN] > 0:
        t = ht[0]
        if t >= until:
            break
        if I[I_MINP] >= 0 and (
            I[I_NRELAY] > 0 or t > F[F_NOW] or hk[0] >= (I[I_MINP] << KEY_BITS)
        ):
            return PENDING
        if (
            I[I_HN] + 64 + margin > heap_cap
            or I[I_NPK] + 8 + margin > pk_cap
            or I[I_NLOG] + 2 > log_cap
            or I[I_NPEND] + 2 > pend_cap
            or I[I_FREE] < 0
        ):
            return GROW
        kind, a, p, x = hkind[0], ha[0], hp[0], hx[0]
        hpop(H, I)
        F[F_NOW] = t
        I[I_EVENTS] += 1
        I[I_PROC] += 1
        I[I_CURP] = I[I_PROC]
        I[I_CURJ] = 0
        if kind == ARRIVE:
            if lazy_t[a] >= 0.0:
                _settle(S, H, I, a, t)
            e = I[I_FREE]
            I[I_FREE] = en_next[e]
            en_pkt[e] = p
            en_tail[e] = x
            en_left[e] = 0
            en_lt[e] = t
            en_next[e] = -1
            if vq_tail[a] < 0:
                vq_head[a] = e
            else:
                en_next[vq_tail[a]] = e
            vq_tail[a] = e
            vq_len[a] += 1
            if vq_len[a] == 1:
                rc = _head_ready(S, H, I, F, P, Q, R, Rl, X, T, a, t, ports)
                if rc < 0:
                    return ERR_NORULE if rc == -1 else ERR_EDGE
        elif kind == PORT:
            pwake[a] = False
            _arb(S, H, I, F, P, Q, R, Rl, X, a, t)
        elif kind == POP:
            _release(S, I, a)
            up = vup[a // C]
            if up >= 0 and rq_len[up] > 0:
                _arb(S, H, I, F, P, Q, R, Rl, X, up, t)
            if vq_len[a] > 0:
                rc = _head_ready(S, H, I, F, P, Q, R, Rl, X, T, a, t, ports)
                if rc < 0:
                    return ERR_NORULE if rc == -1 else ERR_EDGE
        elif kind == DELIVER:
            I[I_PDELIV] += 1
            size = pk_size[p]
            F[F_WDELIV] += size
            q = I[I_NLOG]
            lat_log[q] = x - pk_tinj[p]
            deliv_log[q] = x
            deliv_size[q] = size
            I[I_NLOG] = q + 1
            if flow_on and pk_tag[p] < 0:
                fl.deliver(W, S, H, I, F, P, a, -pk_tag[p] - 1, t, x)
            elif I[I_WANT]:
                q = I[I_NPEND]
                pd_P[q], pd_kind[q], pd_a[q], pd_pkt[q], pd_th[q], pd_tt[q] = (
                    I[I_PROC], DELIVER, a, p, t, x)
                I[I_NPEND] = q + 1
                if I[I_MINP] < 0:
                    I[I_MINP] = I[I_PROC]
        elif kind == fl.FLOW_DONE:
            fl.chunk_done(W, S, H, I, F, P, a, p)
        else:
            q = I[I_NPEND]
            pd_P[q], pd_kind[q], pd_a[q], pd_pkt[q], pd_th[q], pd_tt[q] = (
                I[I_PROC], CALL, a, -1, t, 0.0)
            I[I_NPEND] = q + 1
            if I[I_MINP] < 0:
                I[I_MINP] = I[I_PROC]
        if t - F[F_LAST] > limit and I[I_INFLIGHT] > 0:
            flush(S, I, t)
            if I[I_INFLIGHT] > 0:
                return DEADLOCK_CHECK
            F[F_LAST] = t
    if I[I_MINP] >= 0:
        return PENDING
    return DONE
