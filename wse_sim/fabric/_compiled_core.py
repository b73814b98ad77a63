"""Numba core of :class:`wse_sim.fabric.compiled.CompiledFabric`: the event loop of
:mod:`wse_sim.fabric.engine` on preallocated arrays.

Every handler here is a line-by-line port of the method of the same name in
``engine.PacketFabric`` (``_arrive``, ``_head_ready``, ``_arb``, ``_grant``, ``_settle``,
``_release``, ``_pop``, ``_deliver``); the reference's deques, dicts and ``Packet`` objects
become index arrays:

* the event heap: a binary heap over ``(time, key)`` in parallel arrays ``ht, hk, hkind, ha,
  hp, hx`` (kind, integer operand, packet index, float operand);
* packets: ``pk_*`` arrays indexed by packet number; buffer entries (the reference's
  ``[packet, tail, ports left, latest tail]`` lists) in an entry pool ``en_*`` with a free
  list, chained per buffer (``vq_head``, ``vq_tail``, ``vq_len``);
* port request queues: one circular singly-linked list per port over nodes
  ``buffer * 5 + port`` (a buffer waits at most once on each of its <= 5 ports);
* the lazily released buffers (reference ``_lazy`` dict): ``lazy_t`` per buffer (-1: not
  lazy) plus a dense list for ``_flush``.

Ordering keys. The reference breaks ties in time by a global sequence number. Here an event's
key is ``(P << 24) | j``: ``P`` the processing index of the event whose handling pushed it,
``j`` the push count within it. Python callbacks (deliveries, timers) run after the compiled
loop returns, but push with the key of the event that called them, and the loop returns
before it would process anything that a pending callback could still order before (an event
with key >= the oldest pending callback's ``P << 24`` or a later time), so the order is the
reference's exactly.

Scalar state lives in ``I`` (int64) and ``F`` (float64) with the indices below. Status codes
returned by the loop (:func:`wse_sim.fabric._loop_core.run_loop`): ``DONE`` (heap empty or
next event at/after ``until``), ``PENDING`` (callbacks to run), ``GROW`` (an array is
nearly full: grow and call again),
``DEADLOCK_CHECK`` (nothing moved for ``deadlock_cycles``), ``ERR_NORULE``/``ERR_EDGE``
(route errors, operands in ``I[I_E0:I_E0+3]``).
"""

from __future__ import annotations

import numpy as np
from numba import njit

SLOTS = 10
RAMP = 4
SLOT_PE = 5
SLOT_EDGE = 6
KEY_BITS = 24

# event kinds (as the reference)
ARRIVE, PORT, POP, DELIVER, CALL = range(5)
# status codes
DONE, PENDING, GROW, DEADLOCK_CHECK, ERR_NORULE, ERR_EDGE = range(6)
# I indices
(
    I_HN,  # heap entries
    I_NPK,  # packets allocated
    I_FREE,  # head of the entry free list (-1: none)
    I_INFLIGHT,
    I_NLAZY,
    I_NLOG,
    I_EVENTS,
    I_PROC,  # processing index of the last event popped
    I_CURP,  # key prefix pushes use now
    I_CURJ,  # pushes made under I_CURP
    I_NPEND,
    I_NRELAY,
    I_WANT,  # 1: deliveries go to the Python hook
    I_PDELIV,  # packets delivered
    I_E0,
    I_E1,
    I_E2,
    I_E3,
    I_MINP,  # oldest pending callback's processing index (-1: none)
    I_LEN,
) = range(20)
F_NOW, F_LAST, F_WDELIV, F_LEN = 0, 1, 2, 4
# port visiting order of a static rule: sorted by name (E, N, RAMP, S, W) as the reference
_ORDER = np.array([1, 0, 4, 2, 3], dtype=np.int64)


@njit(cache=True, _nrt=False)
def _less(ht, hk, i, j):
    return ht[i] < ht[j] or (ht[i] == ht[j] and hk[i] < hk[j])


@njit(cache=True, _nrt=False)
def _sift_up(H, i, t, k, kind, a, p, x):
    """Place an event at hole ``i`` and move it up: parents that follow it move down into
    the hole (one copy per level instead of a swap; keys are unique, so the pop order is the
    same whatever the heap's shape)."""
    ht, hk, hkind, ha, hp, hx = H
    while i > 0:
        par = (i - 1) >> 1
        if t < ht[par] or (t == ht[par] and k < hk[par]):
            ht[i], hk[i], hkind[i], ha[i], hp[i], hx[i] = (
                ht[par], hk[par], hkind[par], ha[par], hp[par], hx[par])
            i = par
        else:
            break
    ht[i], hk[i], hkind[i], ha[i], hp[i], hx[i] = t, k, kind, a, p, x


@njit(cache=True, _nrt=False)
def hpush(H, I, t, kind, a, p, x):
    """Push an event with the next key of the current prefix."""
    i = I[I_HN]
    I[I_HN] = i + 1
    k = (I[I_CURP] << KEY_BITS) | I[I_CURJ]
    I[I_CURJ] += 1
    _sift_up(H, i, t, k, kind, a, p, x)


@njit(cache=True, _nrt=False)
def hpop(H, I):
    """Remove the top event (its fields must have been read): the last event goes down from
    the root's hole, the smaller child moving up at each level."""
    ht, hk, hkind, ha, hp, hx = H
    n = I[I_HN] - 1
    I[I_HN] = n
    if n == 0:
        return
    t, k, kind, a, p, x = ht[n], hk[n], hkind[n], ha[n], hp[n], hx[n]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and _less(ht, hk, c + 1, c):
            c += 1
        if ht[c] < t or (ht[c] == t and hk[c] < k):
            ht[i], hk[i], hkind[i], ha[i], hp[i], hx[i] = (
                ht[c], hk[c], hkind[c], ha[c], hp[c], hx[c])
            i = c
        else:
            break
    ht[i], hk[i], hkind[i], ha[i], hp[i], hx[i] = t, k, kind, a, p, x


@njit(cache=True, _nrt=False)
def bulk_push(H, I, ts, kinds, as_, ps, xs, keys):
    """Push staged events with their own keys (injections made from Python)."""
    for q in range(ts.shape[0]):
        i = I[I_HN]
        I[I_HN] = i + 1
        _sift_up(H, i, ts[q], keys[q], kinds[q], as_[q], ps[q], xs[q])


# ----------------------------------------------------------------------------- handlers
@njit(cache=True, _nrt=False)
def _release(S, I, v):
    (vq_head, vq_tail, vq_len, vocc, lazy_t, lazy_list, lazy_pos, en_pkt, en_tail, en_left,
     en_lt, en_next, pk_size, node_occ, C) = S
    e = vq_head[v]
    nx_ = en_next[e]
    vq_head[v] = nx_
    if nx_ < 0:
        vq_tail[v] = -1
    vq_len[v] -= 1
    en_next[e] = I[I_FREE]
    I[I_FREE] = e
    size = pk_size[en_pkt[e]]
    vocc[v] -= size
    I[I_INFLIGHT] -= 1
    ns = v // C
    if ns % SLOTS < SLOT_PE:
        node_occ[ns // SLOTS] -= size


@njit(cache=True, _nrt=False)
def _unlazy(S, I, v):
    lazy_t, lazy_list, lazy_pos = S[4], S[5], S[6]
    T = lazy_t[v]
    lazy_t[v] = -1.0
    pos = lazy_pos[v]
    last = I[I_NLAZY] - 1
    w = lazy_list[last]
    lazy_list[pos] = w
    lazy_pos[w] = pos
    I[I_NLAZY] = last
    return T


@njit(cache=True, _nrt=False)
def _settle(S, H, I, v, t):
    T = _unlazy(S, I, v)
    if T <= t:
        _release(S, I, v)
    else:
        hpush(H, I, T, POP, v, -1, 0.0)


@njit(cache=True, _nrt=False)
def flush(S, I, t):
    """Release every lazily held head whose tail has left by ``t``."""
    lazy_t, lazy_list = S[4], S[5]
    q = 0
    while q < I[I_NLAZY]:
        v = lazy_list[q]
        if lazy_t[v] <= t:
            _unlazy(S, I, v)
            _release(S, I, v)
        else:
            q += 1


@njit(cache=True, _nrt=False)
def _rq_append(R, o, node):
    rq_tail, rq_len, rq_next = R
    tl = rq_tail[o]
    if tl < 0:
        rq_next[node] = node
    else:
        rq_next[node] = rq_next[tl]
        rq_next[tl] = node
    rq_tail[o] = node
    rq_len[o] += 1


@njit(cache=True, _nrt=False)
def _rq_popleft(R, o):
    rq_tail, rq_len, rq_next = R
    tl = rq_tail[o]
    hd = rq_next[tl]
    if hd == tl:
        rq_tail[o] = -1
    else:
        rq_next[tl] = rq_next[hd]
    rq_len[o] -= 1
    return hd


@njit(cache=True, _nrt=False)
def _tx(S, T, I, v, pkt, ports):
    """Ports the head packet of buffer ``v`` leaves on, into ``ports``; returns how many
    (-1 with I[I_E*] set on a route error)."""
    C = S[14]
    mode, rule_rx, rule_tx, nbr, cols = T[0], T[1], T[2], T[3], T[4]
    pk_colour, pk_dst = T[5], T[6]
    ns = v // C
    slot = ns % SLOTS
    n = ns // SLOTS
    if slot >= SLOT_PE:
        ports[0] = n * SLOTS + slot
        return 1
    col = pk_colour[pkt]
    m = mode[col]
    if m == 0:
        r = n * C + col
        if rule_rx[r] != slot:
            I[I_E0] = col
            I[I_E1] = n
            I[I_E2] = slot
            return -1
        bits = rule_tx[r]
        k = 0
        for q in range(5):
            p = _ORDER[q]
            if bits & (1 << p):
                ports[k] = n * SLOTS + p
                k += 1
        return k
    r0, c0 = n // cols, n % cols
    dst = pk_dst[pkt]
    dr, dc = dst // cols, dst % cols
    if m == 1:
        p = 1 if dc > c0 else 3 if dc < c0 else 2 if dr > r0 else 0 if dr < r0 else RAMP
    else:
        p = 2 if dr > r0 else 0 if dr < r0 else 1 if dc > c0 else 3 if dc < c0 else RAMP
    if p != RAMP and nbr[n * 4 + p] < 0:
        I[I_E0] = col
        I[I_E1] = n
        I[I_E2] = p
        I[I_E3] = dst
        return -2
    ports[0] = n * SLOTS + p
    return 1


@njit(cache=True, _nrt=False)
def _new_packet(P, I, src_pkt, colour, ttl):
    pk_pid, pk_colour, pk_size, pk_src, pk_dst, pk_tinj, pk_ttl, pk_tag = P
    q = I[I_NPK]
    I[I_NPK] = q + 1
    pk_pid[q] = pk_pid[src_pkt]
    pk_colour[q] = colour
    pk_size[q] = pk_size[src_pkt]
    pk_src[q] = pk_src[src_pkt]
    pk_dst[q] = -1
    pk_tinj[q] = pk_tinj[src_pkt]
    pk_ttl[q] = ttl
    pk_tag[q] = pk_tag[src_pkt]
    return q


@njit(cache=True, _nrt=False)
def _grant(S, H, I, F, P, Q, o, v, e, pkt, dv, rl_col, t):
    (vq_head, vq_tail, vq_len, vocc, lazy_t, lazy_list, lazy_pos, en_pkt, en_tail, en_left,
     en_lt, en_next, pk_size, node_occ, C) = S
    node_peak, lat, pinv, pfree, pwav, vup, rq_len = Q
    size = pk_size[pkt]
    tail = t + size * pinv[o]
    if en_tail[e] > tail:
        tail = en_tail[e]
    pfree[o] = tail
    pwav[o] += size
    lt = lat[((v // C) % SLOTS) * SLOTS + o % SLOTS]
    if dv >= 0:
        vocc[dv] += size
        if rl_col < 0:
            nd = dv // (SLOTS * C)
            occ = node_occ[nd] + size
            node_occ[nd] = occ
            if occ > node_peak[nd]:
                node_peak[nd] = occ
            nxt = pkt
        else:
            nxt = _new_packet(P, I, pkt, rl_col, P[6][pkt] - 1)
            hpush(H, I, t + lt, DELIVER, o // SLOTS, pkt, tail + lt)
        I[I_INFLIGHT] += 1
        hpush(H, I, t + lt, ARRIVE, dv, nxt, tail + lt)
    else:
        hpush(H, I, t + lt, DELIVER, o // SLOTS, pkt, tail + lt)
    en_left[e] -= 1
    if tail > en_lt[e]:
        en_lt[e] = tail
    if en_left[e] == 0:
        up = vup[v // C]
        if vq_len[v] > 1 or (up >= 0 and rq_len[up] > 0):
            hpush(H, I, en_lt[e], POP, v, -1, 0.0)
        else:
            lazy_t[v] = en_lt[e]
            n_ = I[I_NLAZY]
            lazy_list[n_] = v
            lazy_pos[v] = n_
            I[I_NLAZY] = n_ + 1
    F[F_LAST] = t


@njit(cache=True, _nrt=False)
def _room(S, H, I, P, Rl, o, base, pkt, t, cap):
    """Next buffer of ``pkt`` through port ``o`` and the relay colour (-1 none); dv = -2:
    no room downstream."""
    vocc, lazy_t, C = S[3], S[4], S[14]
    pk_colour, pk_size, pk_ttl = P[1], P[2], P[6]
    relay_out, relay_cap = Rl
    size = pk_size[pkt]
    if base >= 0:
        dv = base + pk_colour[pkt]
        if lazy_t[dv] >= 0.0:
            _settle(S, H, I, dv, t)
        occ = vocc[dv]
        if occ != 0.0 and occ + size > cap:
            return -2, -1
        return dv, -1
    if I[I_NRELAY] > 0 and pk_ttl[pkt] > 0:
        n = o // SLOTS
        rc = relay_out[n * C + pk_colour[pkt]]
        if rc >= 0:
            dv = (n * SLOTS + SLOT_PE) * C + rc
            if lazy_t[dv] >= 0.0:
                _settle(S, H, I, dv, t)
            occ = vocc[dv]
            if occ != 0.0 and occ + size > relay_cap[n * C + pk_colour[pkt]]:
                return -2, -1
            return dv, rc
    return -1, -1


@njit(cache=True, _nrt=False)
def _arb(S, H, I, F, P, Q, R, Rl, X, o, t):
    en_pkt, vq_head = S[7], S[0]
    pbase, pwake, cap = X[0], X[1], X[2]
    pfree = Q[3]
    rq_tail, rq_len, rq_next = R
    if rq_len[o] == 0:
        return
    if pfree[o] > t:
        if not pwake[o]:
            pwake[o] = True
            hpush(H, I, pfree[o], PORT, o, -1, 0.0)
        return
    base = pbase[o]
    for _ in range(rq_len[o]):
        node = _rq_popleft(R, o)
        v = node // 5
        e = vq_head[v]
        pkt = en_pkt[e]
        dv, rc = _room(S, H, I, P, Rl, o, base, pkt, t, cap)
        if dv == -2:
            _rq_append(R, o, node)
            continue
        _grant(S, H, I, F, P, Q, o, v, e, pkt, dv, rc, t)
        if rq_len[o] > 0 and not pwake[o]:
            pwake[o] = True
            hpush(H, I, pfree[o], PORT, o, -1, 0.0)
        return


@njit(cache=True, _nrt=False)
def _head_ready(S, H, I, F, P, Q, R, Rl, X, T, v, t, ports):
    en_pkt, en_left, en_lt, vq_head = S[7], S[9], S[10], S[0]
    pbase, pwake = X[0], X[1]
    pfree = Q[3]
    rq_len = R[1]
    e = vq_head[v]
    pkt = en_pkt[e]
    k = _tx(S, T, I, v, pkt, ports)
    if k < 0:
        return k
    en_left[e] = k
    en_lt[e] = t
    if k == 1:
        o = ports[0]
        if pfree[o] <= t and rq_len[o] == 0 and not pwake[o]:
            base = pbase[o]
            if base >= 0:
                dv, rc = _room(S, H, I, P, Rl, o, base, pkt, t, X[2])
                if dv >= 0:
                    _grant(S, H, I, F, P, Q, o, v, e, pkt, dv, -1, t)
                    return 0
            elif I[I_NRELAY] == 0:
                _grant(S, H, I, F, P, Q, o, v, e, pkt, -1, -1, t)
                return 0
    for q in range(k):
        o = ports[q]
        node = v * 5 + (o % SLOTS if o % SLOTS < 5 else 0)
        _rq_append(R, o, node)
        if not pwake[o]:
            if pfree[o] <= t:
                _arb(S, H, I, F, P, Q, R, Rl, X, o, t)
            else:
                pwake[o] = True
                hpush(H, I, pfree[o], PORT, o, -1, 0.0)
    return 0
