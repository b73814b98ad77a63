"""PE programs run inside the compiled engine: a kernel's messages, their dependencies and
gates, and its PEs' chunk state machine (the ``packet`` backend's ``_KernelRun`` on
:class:`wse_sim.fabric.dataflow.Dataflow`) as arrays, handled by the compiled event loop
(:mod:`wse_sim.fabric._flow_core`) instead of by Python callbacks.

Same semantics and the same results as the Python path, event for event (the tests hold the
``packet`` backend on the compiled engine to the reference engine, which runs the Python
path): a message is cut into packets of its packet size; a packet leaves when its gates are
open and every packet it depends on has arrived (cut-through, ``forward_latency`` later); a PE
starts chunk ``i`` when chunk ``i - 1`` is done and its inputs are there.

A message is given as ``(src router, colour, size wavelets, deps, gates, edge, feeds, outs,
packet wavelets, route destinations)`` rows in :class:`MessageTable`, in the order the Python
path declares them (that order breaks ties in time).
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
    """A kernel's messages as columns, appended in declaration order.

    ``add`` takes one message; ``add_block`` many at once (numpy arrays of equal length; a
    message's packet dependency is at most one, given by index into this table, -1: none).
    """

    def __init__(self, eng):
        self.eng = eng
        self.src: list = []
        self.colour: list = []
        self.size: list = []
        self.gates: list = []
        self.edge: list = []  # entry port: RAMP or the edge direction index
        self.feeds: list = []
        self.pw: list = []
        self.ndest: list = []
        self.dep: list = []  # (mid array, dep array, offset array) blocks
        self.outs: list = []  # (mid array, pe array, chunk array) blocks
        self.dests: list = []  # per message: route-destination router indices (tuple)
        self.n = 0

    def add(self, src, colour, size, deps, gates, edge, feeds, outs, pw, dests) -> int:
        """Append one message; ``deps``: ``((mid, offset), ...)``; ``outs``: ``((pe,
        chunk), ...)`` whose finishing opens one gate; ``dests``: route destination routers."""
        mid = self.n
        self.n += 1
        for col, val in (
            (self.src, src), (self.colour, colour), (self.size, size), (self.gates, gates),
            (self.edge, RAMP if edge is None else _DIR_INDEX[edge]),
            (self.feeds, -1 if feeds is None else feeds), (self.pw, pw),
            (self.ndest, len(dests)),
        ):  # fmt: skip
            col.append(val)
        self.dests.append(dests)
        for d, off in deps:
            self.dep.append((mid, d, off))
        for pe, chunk in outs:
            self.outs.append((mid, pe, chunk))
        return mid


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
    npe = len(chunk_cycles)
    src = np.asarray(tab.src, _I64)
    colour = np.asarray(tab.colour, _I64)
    size = np.asarray(tab.size, float)
    entry = np.asarray(tab.edge, _I64)
    slot = np.where(entry == RAMP, SLOT_PE, SLOT_EDGE + entry)
    pw = np.asarray(tab.pw, float)
    S = np.where(pw > 0, pw, float(eng.packet_wavelets))
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
    mi[:nm, fl.M_GATES] = np.asarray(tab.gates, _I64)
    mi[:nm, fl.M_FEEDS] = np.asarray(tab.feeds, _I64)
    mi[:nm, fl.M_NDEST] = np.asarray(tab.ndest, _I64)
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
    if tab.dep:
        dm, dd, do = (np.asarray(c) for c in zip(*tab.dep, strict=True))
    else:
        dm = dd = np.zeros(0, _I64)
        do = np.zeros(0)
    dm, dd, do = dm.astype(_I64), dd.astype(_I64), do.astype(float)
    mi[:nm, fl.M_NDEP] = np.bincount(dm, minlength=nm)[:nm] if nm else 0
    mi[:nm, fl.M_DEP0] = np.cumsum(mi[:nm, fl.M_NDEP]) - mi[:nm, fl.M_NDEP]
    order = np.argsort(dd, kind="stable")
    dt_mid, dt_off = dm[order], do[order]
    mi[:nm, fl.M_NDT] = np.bincount(dd, minlength=nm)[:nm] if nm else 0
    mi[:nm, fl.M_DT0] = np.cumsum(mi[:nm, fl.M_NDT]) - mi[:nm, fl.M_NDT]
    # destination slots: the routers the engine delivers each message to, sorted
    cache: dict = {}
    ds_nodes = []
    for m in range(nm):
        key = (tab.src[m], tab.edge[m], tab.colour[m])
        d = cache.get(key)
        if d is None:
            d = cache[key] = np.sort(np.asarray(eng._dests(key[0], key[1], key[2], 0, -1), _I64))
        ds_nodes.append(d)
    nds = np.fromiter((len(d) for d in ds_nodes), _I64, nm)
    mi[:nm, fl.M_NDS] = nds
    mi[:nm, fl.M_DS0] = np.cumsum(nds) - nds
    ds_node = np.concatenate(ds_nodes) if nm else np.zeros(0, _I64)
    ns = max(len(ds_node), 1)
    ds_i = np.zeros((ns, fl.D_LEN), _I64)
    ds_i[:, fl.D_PH0] = -1
    ds_f = np.zeros((ns, fl.DF_LEN))
    # packet heads kept where a dependent watches: (depended-on message, dependent's source)
    ph_len = 0
    for e in range(len(dd)):
        m, node = int(dd[e]), int(src[dm[e]])
        a = int(mi[m, fl.M_DS0])
        j = a + int(np.searchsorted(ds_node[a : a + nds[m]], node))
        if j < a + nds[m] and ds_node[j] == node and ds_i[j, fl.D_PH0] < 0:
            ds_i[j, fl.D_PH0] = ph_len
            ph_len += int(npk[m])
    ph = np.full(max(ph_len, 1), np.nan)
    # PEs: inputs each chunk waits for, outputs each chunk's end opens
    need = np.zeros((max(npe, 1), n), _I64)
    feeds = mi[:nm, fl.M_FEEDS]
    for m in np.flatnonzero(feeds >= 0).tolist():
        for dn in tab.dests[m]:
            pi = pidx[dn]
            if pi >= 0:
                need[pi, feeds[m]] += 1
    if weight_gate_pe:
        need[:npe] += 1
    if tab.outs:
        om, ope, och = (np.asarray(c, _I64) for c in zip(*tab.outs, strict=True))
    else:
        om = ope = och = np.zeros(0, _I64)
    g = ope * n + och
    order = np.argsort(g, kind="stable")
    og_mid = om[order]
    og0 = np.zeros(max(npe, 1) * n + 1, _I64)
    np.cumsum(np.bincount(g, minlength=max(npe, 1) * n), out=og0[1:])
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
         dt_mid if len(dt_mid) else z1, dt_off if len(dt_off) else zf, ds_node if len(ds_node) else
         np.zeros(1, _I64), ds_i, ds_f, ph, pe_i, pe_f, need, np.full((max(npe, 1), n), float(t0)),
         np.asarray(pidx, _I64), og0, og_mid if len(og_mid) else np.zeros(1, _I64), wm0,
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
