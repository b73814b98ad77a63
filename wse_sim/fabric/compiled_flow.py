"""PE programs run inside the compiled engine: a kernel's messages, their dependencies and
gates, and its PEs' chunk state machine (the ``packet`` backend's ``_KernelRun`` on
:class:`wse_sim.fabric.dataflow.Dataflow`) as arrays, handled by the compiled event loop
(:mod:`wse_sim.fabric._flow_core`) instead of by Python callbacks.

Same semantics and the same results as the Python path, event for event (the tests hold the
``packet`` backend on the compiled engine to the reference engine, which runs the Python
path): a message is cut into packets of its packet size; a packet leaves when its gates are
open and every packet it depends on has arrived (cut-through, ``forward_latency`` later); a PE
starts chunk ``i`` when chunk ``i - 1`` is done and its inputs are there.

A kernel's messages come as the pattern expansions' rows (or :class:`MessageBlock` s) in the
order the Python path declares them (that order breaks ties in time): :class:`MessageTable`
turns them into columns, :func:`build_state` into the loop's state, :class:`KernelFlow` runs
them on the engine.
"""

from __future__ import annotations

import numpy as np

from wse_sim.fabric import _compiled_core as core
from wse_sim.fabric import _flow_core as fl
from wse_sim.fabric.ports import _DIR_INDEX, RAMP, SLOT_EDGE, SLOT_PE, SLOTS

_I64 = np.int64


def empty_state() -> tuple:
    """A flow state with the right types that is off (``W_ON`` 0)."""
    i1, f1 = np.zeros(1, _I64), np.zeros(1)
    i2, f2 = np.zeros((1, 1), _I64), np.zeros((1, 1))
    wi = np.zeros(fl.W_LEN, _I64)
    wf = np.zeros(fl.WF_LEN)
    return (wi, wf, i2, f2, i2, f2, i1, f1, i1, f1, i1, i2, f2, f1, i2, f2, i2, f2, i1, i1, i1,
            i1, i1, f1)  # fmt: skip


class MessageTable:
    """A kernel's messages as columns, in declaration order.

    Built from the rows (or :class:`MessageBlock` s) the ``packet`` backend's pattern
    expansions make:
    ``(key, src, route, size, deps, gates, edge, feeds, outs, packet wavelets)`` with ``src``
    a PE ``(r, c)`` or router index, ``route`` a :class:`~wse_sim.fabric.routing.Route`,
    ``deps`` ``((key of an earlier message, offset), ...)``, ``edge`` None (the PE's RAMP) or
    the side of the edge port it enters by, ``feeds`` the chunk it is an input of (or None),
    ``outs`` ``((PE number, chunk), ...)`` whose end opens one of its ``gates``.

    Attributes (numpy arrays, one entry per message unless said): ``src``, ``colour``,
    ``size`` (wavelets), ``gates``, ``entry`` (RAMP or edge direction index), ``feeds`` (-1:
    none), ``pw`` (packet wavelets, 0: the engine's), ``rid`` (route number), ``dep`` (rows
    ``(message, message it depends on, offset)``), ``outs`` (rows ``(message, PE, chunk)``),
    ``routes`` (list of route objects), ``keys`` (message keys).
    """

    def __init__(self, eng, rows: list):
        self.eng = eng
        self.routes: list = []
        self._rnum: dict = {}
        self.keys: list = []
        ids: dict = {}
        parts: list = []
        run: list = []
        n = 0
        for item in rows + [None]:
            if isinstance(item, tuple):
                run.append(item)
                continue
            if run:
                parts.append(self._rows(run, n, ids))
                n += len(run)
                run = []
            if item is not None:
                parts.append(self._block(item, n))
                n += len(item.src)
        self.n = n
        cols = list(zip(*parts, strict=True)) if parts else [()] * 11
        cat = [np.concatenate(c) if c else np.zeros(0) for c in cols]
        self.src, self.rid, self.size, self.gates, self.entry, self.feeds = (
            cat[0].astype(_I64), cat[1].astype(_I64), cat[2].astype(float),
            cat[3].astype(_I64), cat[4].astype(_I64), cat[5].astype(_I64))  # fmt: skip
        self.pw = cat[6].astype(float)
        self.dep = (cat[7].astype(_I64), cat[8].astype(_I64), cat[9].astype(float))
        self.outs = (cat[10][:, 0].astype(_I64), cat[10][:, 1].astype(_I64),
                     cat[10][:, 2].astype(_I64)) if len(cat[10]) else (np.zeros(0, _I64),) * 3
        self.colour = np.fromiter((r.colour for r in self.routes), _I64, len(self.routes))[
            self.rid] if n else np.zeros(0, _I64)  # fmt: skip

    def _route_ids(self, routes) -> list[int]:
        out = []
        for r in routes:
            j = self._rnum.get(id(r))
            if j is None:
                j = self._rnum[id(r)] = len(self.routes)
                self.routes.append(r)
            out.append(j)
        return out

    def _rows(self, rows: list, m0: int, ids: dict) -> tuple:
        n = len(rows)
        index = self.eng.mesh.index
        keys, src, route, size, deps, gates, edge, feeds, outs, pw = zip(*rows, strict=True)
        self.keys.extend(keys)
        ids.update({k: m0 + i for i, k in enumerate(keys)})
        dep = [(m0 + i, ids[dk], float(off)) for i, d in enumerate(deps) if d for dk, off in d]
        dm, dd, do = (np.asarray(c) for c in zip(*dep, strict=True)) if dep else ((),) * 3
        ot = [(m0 + i, pe, ch) for i, o in enumerate(outs) if o for pe, ch in o]
        return (
            np.fromiter((index(x) if isinstance(x, tuple) else int(x) for x in src), _I64, n),
            np.asarray(self._route_ids(route), _I64),
            np.asarray(size, float),
            np.asarray(gates, _I64),
            np.fromiter((RAMP if e is None else _DIR_INDEX[e] for e in edge), _I64, n),
            np.fromiter((-1 if f is None else f for f in feeds), _I64, n),
            np.fromiter((p or 0.0 for p in pw), float, n),
            np.asarray(dm, _I64), np.asarray(dd, _I64), np.asarray(do, float),
            np.asarray(ot, _I64).reshape(-1, 3),
        )  # fmt: skip

    def _block(self, b: MessageBlock, m0: int) -> tuple:
        k = len(b.src)
        self.keys.extend([None] * k)
        rid = np.asarray(self._route_ids(b.routes), _I64)[b.rid]
        has = b.dep >= 0
        out = np.stack([m0 + np.arange(k), b.out_pe, b.out_chunk], axis=1)[b.out_pe >= 0]
        return (
            b.src, rid, b.size, np.full(k, b.gates, _I64), np.full(k, RAMP, _I64),
            np.full(k, -1, _I64), np.full(k, b.pw, float), m0 + np.flatnonzero(has),
            m0 + b.dep[has], b.dep_off[has], out,
        )  # fmt: skip


class MessageBlock:
    """Many messages at once, in order (a pattern expansion's fast path): each leaves its
    source PE's RAMP, feeds no chunk, waits for ``gates`` gates, and has at most one packet
    dependency and one output gate.

    Args:
        src: source router per message; routes: route objects; rid: index into ``routes``
            per message; size: wavelets per message; gates: gates per message (one value);
        pw: packet wavelets (0: the engine's); dep: the message it depends on (index in this
            block, -1: none); dep_off: that dependency's offset; out_pe, out_chunk: the
            (PE, chunk) whose end opens a gate (-1: none).
    """

    def __init__(self, src, routes, rid, size, gates, pw, dep, dep_off, out_pe, out_chunk):
        self.src, self.routes, self.rid, self.size = src, routes, rid, size
        self.gates, self.pw, self.dep, self.dep_off = gates, pw, dep, dep_off
        self.out_pe, self.out_chunk = out_pe, out_chunk


def _csr(groups: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable order of rows by group, and each group's first row (length ``n_groups + 1``)."""
    order = np.argsort(groups, kind="stable")
    start = np.zeros(n_groups + 1, _I64)
    np.cumsum(np.bincount(groups, minlength=n_groups), out=start[1:])
    return order, start


def build_state(tab: MessageTable, *, pidx, n, chunk_cycles, crit, has_weights,
                weight_gate_pe, weight_msgs, fwd, t0, t_now) -> tuple:  # fmt: skip
    """The flow state of one kernel (see :mod:`wse_sim.fabric._flow_core`).

    Args:
        tab: its messages.
        pidx: PE number per router index (-1: no PE of the kernel).
        n: chunks per PE; chunk_cycles: cycles of one chunk per PE.
        crit: the PE whose weight stall is counted; has_weights: the kernel streams weights.
        weight_gate_pe: PEs wait for weights themselves (one gate per chunk).
        weight_msgs: per chunk, messages that a weight arrival opens.
        fwd: a PE's forwarding latency, cycles; t0: the kernel's start cycle; t_now: the
            engine's cycle when the messages are declared.

    Raises:
        RouteError: a message's colour has no rule receiving it at its source.
    """
    eng = tab.eng
    nm = tab.n
    nn = eng.mesh.n_nodes
    npe = len(chunk_cycles)
    pidx = np.asarray(pidx, _I64)
    src, colour, size, entry = tab.src, tab.colour, tab.size, tab.entry
    slot = np.where(entry == RAMP, SLOT_PE, SLOT_EDGE + entry)
    S = np.where(tab.pw > 0, tab.pw, float(eng.packet_wavelets))
    npk = np.maximum(np.ceil(size / S - 1e-9), 1).astype(_I64)
    pk0 = np.zeros(nm + 1, _I64)
    np.cumsum(npk, out=pk0[1:])
    nq = int(pk0[-1])
    mi = np.zeros((max(nm, 1), fl.M_LEN), _I64)
    mf = np.zeros((max(nm, 1), fl.MF_LEN))
    mi[:nm, fl.M_SRC] = src
    mi[:nm, fl.M_V] = (src * SLOTS + slot) * eng.C + colour
    mi[:nm, fl.M_COLOUR] = colour
    mi[:nm, fl.M_NP] = npk
    mi[:nm, fl.M_PK0] = pk0[:-1]
    mi[:nm, fl.M_GATES] = tab.gates
    mi[:nm, fl.M_FEEDS] = tab.feeds
    mf[:nm, fl.MF_SIZE] = size
    mf[:nm, fl.MF_S] = S
    mf[:nm, fl.MF_GATE_T] = t_now
    qi = np.zeros((max(nq, 1), fl.Q_LEN), _I64)
    qf = np.zeros((max(nq, 1), fl.QF_LEN))
    qmid = np.repeat(np.arange(nm, dtype=_I64), npk)
    qi[:nq, fl.Q_MID] = qmid
    qf[:nq, fl.QF_HEAD] = t_now
    qf[:nq, fl.QF_TAIL] = t_now
    last = np.zeros(nq, bool)
    last[pk0[1:] - 1] = True
    qf[:nq, fl.QF_SIZE] = np.where(last, size[qmid] - S[qmid] * (npk[qmid] - 1), S[qmid])
    # packet dependencies (CSR by message) and dependents (CSR by the message depended on)
    dm, dd, do = tab.dep
    ndep = np.bincount(dm, minlength=nm)[:nm]
    mi[:nm, fl.M_NDEP] = ndep
    mi[:nm, fl.M_DEP0] = np.cumsum(ndep) - ndep
    order, dt0 = _csr(dd, nm)
    dt_mid, dt_off = dm[order], do[order]
    mi[:nm, fl.M_DT0] = dt0[:-1]
    mi[:nm, fl.M_NDT] = np.diff(dt0)
    # destination slots: the routers the engine delivers each message to (sorted), and the
    # routers its route lists (for the inputs PEs wait for), both per route and source
    combo = (tab.rid * nn + src) * 16 + entry
    uc, inv = np.unique(combo, return_inverse=True)
    eds, rds = [], []
    for c in uc.tolist():
        r, rest = divmod(c, nn * 16)
        s_, e_ = divmod(rest, 16)
        rt = tab.routes[r]
        eds.append(np.sort(np.asarray(eng._dests(s_, e_, int(rt.colour), 0, -1), _I64)))
        rds.append(np.asarray([eng.mesh.index(x) for x in rt.dests], _I64))
    elen = np.asarray([len(x) for x in eds], _I64)
    eoff = np.cumsum(elen) - elen
    ecat = np.concatenate(eds) if eds else np.zeros(0, _I64)
    nds = elen[inv] if nm else np.zeros(0, _I64)
    mi[:nm, fl.M_NDS] = nds
    ds0 = np.cumsum(nds) - nds
    mi[:nm, fl.M_DS0] = ds0
    tot = int(nds.sum())
    ds_node = ecat[np.repeat(eoff[inv] - ds0, nds) + np.arange(tot)] if tot else np.zeros(0, _I64)
    rlen = np.asarray([len(x) for x in rds], _I64)
    mi[:nm, fl.M_NDEST] = rlen[inv] if nm else 0
    ns = max(tot, 1)
    ds_i = np.zeros((ns, fl.D_LEN), _I64)
    ds_i[:, fl.D_PH0] = -1
    ds_f = np.zeros((ns, fl.DF_LEN))
    # packet heads kept where a dependent watches: (depended-on message, dependent's source)
    ph_len = 0
    if len(dd):
        gkey = np.repeat(np.arange(nm, dtype=_I64), nds) * nn + ds_node
        j = np.searchsorted(gkey, dd * nn + src[dm])
        ok = j < tot
        ok[ok] = gkey[j[ok]] == (dd * nn + src[dm])[ok]
        slots = np.unique(j[ok])
        smsg = np.repeat(np.arange(nm, dtype=_I64), nds)[slots]
        ln = npk[smsg]
        ds_i[slots, fl.D_PH0] = np.cumsum(ln) - ln
        ph_len = int(ln.sum())
    ph = np.full(max(ph_len, 1), np.nan)
    # PEs: inputs each chunk waits for, outputs each chunk's end opens
    need = np.zeros((max(npe, 1), n), _I64)
    fm = np.flatnonzero(tab.feeds >= 0)
    if len(fm):
        rcat = np.concatenate(rds) if rds else np.zeros(0, _I64)
        roff = np.cumsum(rlen) - rlen
        cnt = rlen[inv[fm]]
        dst = rcat[np.repeat(roff[inv[fm]], cnt) + np.arange(int(cnt.sum())) -
                   np.repeat(np.cumsum(cnt) - cnt, cnt)]  # fmt: skip
        pis = pidx[dst]
        chs = np.repeat(tab.feeds[fm], cnt)
        keep = pis >= 0
        np.add.at(need, (pis[keep], chs[keep]), 1)
    if weight_gate_pe:
        need[:npe] += 1
    om, ope, och = tab.outs
    g = ope * n + och
    order, og0 = _csr(g, max(npe, 1) * n)
    og_mid = om[order]
    wm0 = np.zeros(n + 1, _I64)
    np.cumsum([len(w) for w in weight_msgs], out=wm0[1:])
    wm_mid = np.asarray([m for w in weight_msgs for m in w] or [0], _I64)
    pe_i = np.zeros((max(npe, 1), fl.P_LEN), _I64)
    pe_f = np.zeros((max(npe, 1), fl.PF_LEN))
    pe_f[:npe, fl.PF_PREV] = t0
    pe_f[:npe, fl.PF_CYC] = chunk_cycles
    wi = np.zeros(fl.W_LEN, _I64)
    wf = np.zeros(fl.WF_LEN)
    wi[fl.W_ON] = 1
    wi[fl.W_NPE], wi[fl.W_N], wi[fl.W_CRIT] = npe, n, crit
    wi[fl.W_HAS_W], wi[fl.W_WGATE_PE] = int(has_weights), int(weight_gate_pe)
    wi[fl.W_PID] = eng._pid_next
    # most events one handled event can push: a chunk's end opening its output messages, or
    # a delivery releasing its dependents' packets, plus a PE timer
    og_pk = np.zeros(max(npe, 1) * n)
    if len(om):
        np.add.at(og_pk, g, npk[om])
    dt_pk = np.zeros(max(nm, 1))
    if len(dd):
        np.add.at(dt_pk, dd, npk[dm])
    wi[fl.W_MARGIN] = int(max(og_pk.max(initial=0), dt_pk.max(initial=0))) + 2
    wf[fl.WF_STALL] = 0.0
    wf[fl.WF_LAST_TAIL] = t0
    wf[fl.WF_FWD] = fwd
    z1, zf = np.zeros(1, _I64), np.zeros(1)
    W = (wi, wf, mi, mf, qi, qf, dd if len(dd) else z1, do if len(do) else zf,
         dt_mid if len(dt_mid) else z1, dt_off if len(dt_off) else zf,
         ds_node if len(ds_node) else z1, ds_i, ds_f, ph, pe_i, pe_f, need,
         np.full((max(npe, 1), n), float(t0)), pidx, og0, og_mid if len(og_mid) else z1, wm0,
         wm_mid, np.full(n, float(t0)))  # fmt: skip
    fl.init_pending(W)
    return W


class KernelFlow:
    """One kernel's PE programs on a :class:`~wse_sim.fabric.compiled.CompiledFabric`: the
    engine runs them in its loop from now on (until :meth:`finish`).

    The entry points made from Python (:meth:`begin`, :meth:`weights_arrived`, :meth:`start`)
    push their events under the engine's current key, as Python callbacks would.
    """

    def __init__(self, eng, W: tuple, n_msgs: int):
        self.eng = eng
        self.W = W
        mi = W[2][:n_msgs]
        self.npk = np.zeros(len(W[2]), _I64)
        self.npk[:n_msgs] = mi[:, fl.M_NP]
        self.n_msgs = int(np.count_nonzero(mi[:, fl.M_NDEST] > 0))
        eng._W = W
        eng.on_deliver = None

    def _call(self, fn, bound: int, *args) -> None:
        eng = self.eng
        eng._flush_stage()
        I = eng._I
        m = int(self.W[0][fl.W_MARGIN]) + bound
        if I[core.I_HN] + 64 + m > len(eng._H[0]) or I[core.I_NPK] + 8 + m > len(eng._P[0]):
            eng._H = eng._grown(eng._H, max(2 * len(eng._H[0]), int(I[core.I_HN]) + 64 + m))
            eng._P = eng._grown(eng._P, max(2 * len(eng._P[0]), int(I[core.I_NPK]) + 8 + m))
            eng._pack()
        I[core.I_CURP], I[core.I_CURJ] = eng._cp, eng._cj
        fn(self.W, eng._S, eng._H, I, eng._F, eng._P, *args)
        eng._cj = int(I[core.I_CURJ])

    def begin(self) -> None:
        """Send what needs nothing (the messages without gates)."""
        mi = self.W[2]
        self._call(fl.begin, int(self.npk[mi[:, fl.M_GATES] == 0].sum()))

    def weights_arrived(self, i: int, t: float) -> None:
        """Chunk ``i`` of the kernel's weights is on the wafer at cycle ``t``."""
        W = self.W
        wm = W[22][W[21][i] : W[21][i + 1]]
        self._call(fl.weights_arrived, int(self.npk[wm].sum()) + int(W[0][fl.W_NPE]), i, t)

    def start(self, t0: float) -> None:
        """Every PE tries its first chunk at ``t0``."""
        self._call(fl.start, int(self.W[0][fl.W_NPE]), t0)

    def check(self) -> None:
        """Raises RuntimeError: a packet reached a PE its message's route does not lead to."""
        if self.W[0][fl.W_ERR]:
            raise RuntimeError("compiled flow: a packet reached a PE outside its route")

    def done(self) -> bool:
        """Every PE has run every chunk and every message has reached all its PEs."""
        self.check()
        wi = self.W[0]
        return (
            wi[fl.W_PES_DONE] == wi[fl.W_NPE]
            and self.eng.in_flight == 0
            and wi[fl.W_MSGS_DONE] >= self.n_msgs
        )

    @property
    def stall(self) -> float:
        """Cycles the critical PE waited for weights still in MemoryX."""
        return float(self.W[1][fl.WF_STALL])

    @property
    def last_tail(self) -> float:
        """Latest cycle a message completely reached a PE."""
        return float(self.W[1][fl.WF_LAST_TAIL])

    def prev_done(self) -> list[float]:
        """Per PE, the cycle its last chunk finished."""
        npe = int(self.W[0][fl.W_NPE])
        return self.W[15][:npe, fl.PF_PREV].tolist()

    def finish(self) -> None:
        """Hand the engine back (its injection counters updated)."""
        eng, wi, wf = self.eng, self.W[0], self.W[1]
        eng._pid_next = int(wi[fl.W_PID])
        eng.packets_injected += int(wi[fl.W_NPK_INJ])
        eng.wavelets_injected += float(wf[fl.WF_INJ])
        eng.wavelets_expected += float(wf[fl.WF_EXP])
        eng._W = empty_state()
