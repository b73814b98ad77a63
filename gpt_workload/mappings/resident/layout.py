"""Where a served model lives on the wafer(s): the decode layout and its SRAM budget.

**Placement.** ``resident``: every weight sits in PE SRAM for the whole run (Cerebras
inference, WaferLLM). The layers are split as evenly as possible over ``S`` systems
(wafers) in a pipeline (layer ``l`` on system ``l * S // L``-ish, :func:`split_layers`); the
embedding on the first, the final norm and LM head on the last (a tied table is held twice
when they differ, as Megatron-LM does). Within a system every matrix of every layer it holds
is tiled over one *region* of PEs, so each PE of it holds one tile of each: either the whole
``R x C`` grid (``region="wafer"``: every layer over the whole wafer, lines of ``C`` and ``R``
PEs), or a square ``P x P`` region per group of consecutive layers (``region=P``; WaferLLM's
decode layout, He et al., OSDI 2025, sections 4.2 and 7: Llama-3-8B decodes on 360 x 360).
A system holds ``floor(R / P) x floor(C / P)`` such regions; its layers go to the fewest of
them (contiguous, as even as possible; the embedding on the first region of the first
system, the final norm and LM head on the last region of the last) whose SRAM holds them,
their K/V cache and buffers; the token's vector crosses from one region to the next (``P``
hops, :mod:`.regions`). ``region="auto"`` (:mod:`.search`) picks the region and the
all-reduce by the analytic step time. ``streaming``: the weights live in
MemoryX and stream in at every decode step, one layer at a time, as in training; one system.

**Matrix-vector products** (the ``gemv`` knob; :class:`gpt_workload.generation.split.GemvSplit`):

* ``mesh`` (default; WaferLLM's MeshGEMV): a vector lives split along one grid axis and
  replicated along the other. A GEMV whose input is split over the columns holds ``K``
  over the columns and ``N`` over the rows; each PE multiplies its tile, then the partial
  sums are all-reduced along each row (tree, chain or WaferLLM's K-tree with ``ktree_k``
  phases, the ``reduce`` knob: :mod:`wse_sim.fabric.lines`), which leaves the
  output split over the rows and replicated along them: the next GEMV holds its matrix the
  other way round. The orientation alternates, so no vector is ever transposed.
* ``rowcol`` (plain): every GEMV holds ``K`` over the rows and ``N`` over the columns; its
  input is broadcast along the rows from the west column, the partials all-reduced along
  each column: every GEMV pays a broadcast across the wafer's width as well.

**Attention** (:class:`gpt_workload.generation.split.KVSplit`): the rows are cut into one
band per K/V head (``R // KV`` rows; several heads per row when ``KV > R``). In one layer,
request ``i``'s cached tokens of a head fill ``u = ceil(max_context / block_tokens)``
consecutive PEs of its band in row-major order (from PE ``i u``), ``block_tokens =
ceil(batch x max_context / band PEs)`` per PE, so the batch spreads over the band; the
layers' caches follow one another around the band, so its PEs share all the layers' caches
(:meth:`DecodeLayout.kv_slots_per_pe`).
A new token's scores, softmax partials and weighted values are computed where its K/V are,
merged by a tree all-reduce (the K-tree on a K-tree layout) along the band's rows, then its
columns.

**SRAM per PE** (:meth:`DecodeLayout.sram`): weight tiles, the K/V blocks of every layer of
the system for every request, and the working buffers (the largest GEMV's input slice and
fp32 partial sums, the attention scores, the residual and activation slices), against
``pe.sram_usable_bytes``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gpt_workload.checks import check_int
from gpt_workload.config import GPTConfig
from gpt_workload.generation.split import DecodePlan, GemvSplit, KVSplit, bounds
from gpt_workload.graph import Op, OpGraph
from gpt_workload.models import build_graph
from gpt_workload.precision import bytes_per_element
from wse_sim.arch import ArchConfig
from wse_sim.errors import ConfigError, FitError
from wse_sim.fabric.lines import ktree_algorithm

__all__ = ["PLACEMENTS", "GEMVS", "REDUCES", "DecodeLayout", "make_layout", "split_layers"]

PLACEMENTS = ("resident", "streaming")
GEMVS = ("mesh", "rowcol")
REDUCES = ("tree", "chain", "ktree")
ACC_BYTES = 4  # fp32 partial sums and attention partials


def split_layers(n_layer: int, systems: int) -> list[range]:
    """The layers each of ``systems`` wafers holds: contiguous, as even as possible (the first
    ``n_layer % systems`` one more)."""
    b = bounds(n_layer, systems)
    return [range(int(b[i]), int(b[i + 1])) for i in range(systems)]


def _tile(n: int, parts: int) -> int:
    return -(-n // parts)


@dataclass
class DecodeLayout:
    """The decode layout of one model on ``systems`` wafers of ``arch`` (see the module
    docstring). Built by :func:`make_layout`.

    Attributes:
        rows, cols: the grid of each system.
        orient: op name -> axis its *input* vector is split over (``"col"``: over the grid
            columns, replicated down the rows; ``"row"``: the other way).
        band_rows: rows per K/V head band; heads_per_band: K/V heads sharing a band's PEs.
        band_pes: PEs of one band (``band_rows x cols``).
        block_tokens: cached tokens of one request, layer and head per PE.
        max_context: the longest context (prompt + new tokens) the layout was sized for.
        batch: requests held at once.
        layers: per system, the layers it holds.
        region: ``P`` of the square region each layer group occupies (``rows = cols = P``),
            0 for the whole grid; ktree_k: phases of a ``ktree`` reduce.
        regions: per system, the layers of each region it uses (one region, all its
            layers, when ``region`` is 0).
        search: what :func:`~gpt_workload.mappings.resident.search.search_layout` tried
            (empty when the region and reduce were given).
    """

    cfg: GPTConfig
    arch: ArchConfig
    precision: str
    placement: str
    gemv: str
    reduce: str
    systems: int
    batch: int
    max_context: int
    rows: int
    cols: int
    graph: OpGraph
    orient: dict[str, str]
    band_rows: int
    heads_per_band: int
    block_tokens: int
    layers: list[range] = field(default_factory=list)
    region: int = 0
    ktree_k: int = 2
    regions: list[list[range]] = field(default_factory=list)
    search: list[dict] = field(default_factory=list)

    @property
    def reduce_algorithm(self) -> str:
        """The line-collective algorithm of the GEMV all-reduces (``ktree2`` for a K-tree
        of two phases)."""
        return f"ktree{self.ktree_k}" if self.reduce == "ktree" else self.reduce

    @property
    def stats_algorithm(self) -> str:
        """The algorithm of the small all-reduces (norm statistics, sampled token): the
        K-tree on a K-tree layout, else the binary tree."""
        return self.reduce_algorithm if self.reduce == "ktree" else "tree"

    def region_loads(self, system: int) -> list[tuple[int, bool, bool]]:
        """``(layers, holds the embedding, holds the head)`` of each region ``system``
        uses."""
        spans = self.regions[system] if self.regions else [self.layers[system]]
        last = len(spans) - 1
        return [(len(r), system == 0 and j == 0, system == self.systems - 1 and j == last)
                for j, r in enumerate(spans)]  # fmt: skip

    def _worst_load(self, system: int) -> tuple[int, bool, bool]:
        return max(self.region_loads(system), key=lambda ld: self._sram_of(ld)["total"])

    @property
    def elem_bytes(self) -> int:
        """Bytes per stored element at the layout's precision."""
        return bytes_per_element(self.precision)

    @property
    def band_pes(self) -> int:
        """PEs of one K/V band."""
        return self.band_rows * self.cols

    @property
    def n_bands(self) -> int:
        """Bands in use (one per ``heads_per_band`` K/V heads)."""
        return -(-int(self.cfg.n_kv_heads) // self.heads_per_band)

    def split_axes(self, axis_in: str) -> tuple[int, int]:
        """``(K pieces, N pieces)`` of a GEMV whose input is split over ``axis_in``."""
        return (self.cols, self.rows) if axis_in == "col" else (self.rows, self.cols)

    def reduce_axis(self, axis_in: str) -> str:
        """The grid axis whose lines all-reduce the partials: along the rows (``"row"``)
        when ``K`` is split over the columns."""
        return "row" if axis_in == "col" else "col"

    def gemv_dims(self, op: Op) -> tuple[int, int]:
        """``(K, N)`` of a linear or LM-head op."""
        dm = self.graph.dims
        return dm[op.attrs["n_in"]], dm[op.attrs["n_out"]]

    def plan(self) -> DecodePlan:
        """The :class:`DecodePlan` the numerics follow: every GEMV's split and the K/V split."""
        gemv = {}
        for op in (*self.graph.layer, *self.graph.epilogue):
            if op.kind in ("linear", "lm_head"):
                kp, np_ = self.split_axes(self.orient[op.name])
                gemv[op.name] = GemvSplit(kp, np_, self.reduce, self.ktree_k)
        kv_order = "ktree" if self.reduce == "ktree" else "tree"
        return DecodePlan(gemv, KVSplit(self.pes_per_request, self.block_tokens, kv_order,
                                        self.ktree_k))  # fmt: skip

    @property
    def pes_per_request(self) -> int:
        """PEs of a band holding one request's cache of one layer and head."""
        return math.ceil(self.max_context / self.block_tokens)

    @property
    def requests_per_pe(self) -> int:
        """Requests whose caches (of one layer) share a PE (1 unless rounding wraps)."""
        return math.ceil(self.batch * self.pes_per_request / self.band_pes)

    # ------------------------------------------------------------------ SRAM
    def weight_bytes_per_pe(self, system: int, load=None) -> dict[str, int]:
        """Weight bytes per PE on ``system`` by op name (the largest tile; resident only), on
        its most loaded region (or the region of ``load``, :meth:`region_loads`)."""
        if self.placement != "resident":
            return {}
        n_layers, first, last = self._worst_load(system) if load is None else load
        g, s = self.graph, self.elem_bytes
        out: dict[str, int] = {}
        d = g.dims["d"]
        for op in g.layer:
            out[op.name] = n_layers * self._op_tile_elems(op) * s
        if first:
            for op in g.prologue:
                rows = g.dims["V"] if op.kind == "embedding" else self.cfg.n_positions
                out[op.name] = _tile(rows, self.rows) * _tile(d, self.cols) * s
        if last:
            for op in g.epilogue:
                out[op.name] = self._op_tile_elems(op) * s
            if self.cfg.tie_embeddings and first:
                out["lm_head"] = 0  # the embedding table is the head
        return out

    def _op_tile_elems(self, op: Op) -> int:
        if op.kind in ("linear", "lm_head"):
            K, N = self.gemv_dims(op)
            kp, np_ = self.split_axes(self.orient[op.name])
            return _tile(K, kp) * _tile(N, np_) + (_tile(N, np_) if len(op.params) > 1 else 0)
        if op.kind == "norm":
            p = self.cols if self.orient[op.name] == "col" else self.rows
            return _tile(self.graph.dims["d"], p) * len(op.params)
        return 0

    def kv_slot_bytes(self) -> int:
        """K and V bytes of one cached token of one layer and one request on a PE (every
        head sharing the PE)."""
        return self.heads_per_band * 2 * self.cfg.d_head * self.elem_bytes

    def kv_slots_per_pe(self, system: int, load=None) -> int:
        """Cached tokens (of one head, any layer and request) a PE holds on ``system`` (its
        most loaded region, or that of ``load``): each layer's caches take ``batch x
        pes_per_request`` PE blocks of ``block_tokens``, laid one after another around the
        band."""
        n_layers = (self._worst_load(system) if load is None else load)[0]
        blocks = n_layers * self.batch * self.pes_per_request
        return math.ceil(blocks / self.band_pes) * self.block_tokens

    def kv_bytes_per_pe(self, system: int, load=None) -> int:
        """K/V cache bytes per PE on ``system`` for the whole batch."""
        return self.kv_slots_per_pe(system, load) * self.kv_slot_bytes()

    def buffer_bytes(self, batch: int | None = None) -> dict[str, int]:
        """Working buffers per PE by kernel kind, bytes, for ``batch`` vectors (default the
        layout's batch)."""
        g, B, s = self.graph, (self.batch if batch is None else batch), self.elem_bytes
        k_max = n_max = 0
        for op in (*g.layer, *g.epilogue):
            if op.kind in ("linear", "lm_head"):
                K, N = self.gemv_dims(op)
                kp, np_ = self.split_axes(self.orient[op.name])
                k_max, n_max = max(k_max, _tile(K, kp)), max(n_max, _tile(N, np_))
        width = max(_tile(g.dims["ff"], min(self.rows, self.cols)), _tile(g.dims["qkv"], self.rows))
        group = self.heads_per_band * (self.cfg.n_head // int(self.cfg.n_kv_heads))
        dh = self.cfg.d_head
        return {
            "gemv": B * (k_max * s + n_max * ACC_BYTES),
            "vectors": B * 3 * width * s,
            "attention": min(B, self.requests_per_pe) * (self.block_tokens * group * ACC_BYTES
                              + group * (dh + 2) * ACC_BYTES + (group + 2) * dh * s),
            "streamed_weights": (2 * k_max * n_max * s if self.placement == "streaming" else 0),
        }  # fmt: skip

    def sram(self, system: int = 0) -> dict:
        """SRAM per PE on ``system``: ``weights``, ``kv_cache``, ``buffers``, ``total``,
        ``capacity`` (bytes), ``free`` (capacity - total), and ``max_context_x_batch``: the
        cached tokens per head (summed over requests) that the bytes left beside the weights
        and this batch's buffers would hold, a capacity figure that ignores the model's
        positions and the buffers and block rounding of other batches (the context a batch
        actually reaches is :meth:`max_context_at`). On a region layout, the most loaded
        region of the system, with the smallest ``max_context_x_batch`` of its regions."""
        out = self._sram_of(self._worst_load(system))
        out["max_context_x_batch"] = min(
            self._sram_of(ld)["max_context_x_batch"] for ld in self.region_loads(system)
        )
        return out

    def _sram_of(self, load: tuple[int, bool, bool]) -> dict:
        memo = self.__dict__.setdefault("_sram_memo", {})
        key = (tuple(load), self.batch, self.max_context, self.block_tokens)
        if key not in memo:
            memo[key] = self._sram_uncached(tuple(load))
        return dict(memo[key])

    def _sram_uncached(self, load: tuple[int, bool, bool]) -> dict:
        w = sum(self.weight_bytes_per_pe(0, load).values())
        kv = self.kv_bytes_per_pe(0, load)
        buf = sum(self.buffer_bytes().values())
        cap = self.arch.pe.sram_usable_bytes
        slots = max(cap - w - buf, 0) // self.kv_slot_bytes()
        n_layers = max(load[0], 1)
        room = slots * self.band_pes // n_layers
        return {
            "weights": w,
            "kv_cache": kv,
            "buffers": buf,
            "total": w + kv + buf,
            "capacity": cap,
            "free": cap - (w + kv + buf),
            "max_context_x_batch": int(room),
        }

    def max_context_at(self, batch: int) -> int:
        """The longest context (prompt + new tokens) each of ``batch`` requests can reach on
        this layout's systems, placement and knobs: the largest ``c <= n_positions`` whose
        layout (:func:`make_layout` with ``batch``, ``max_context=c``) fits every system's
        SRAM, found by bisection (the bytes needed grow with the context); 0 when not even
        one token fits. Unlike ``sram()["max_context_x_batch"]`` (free bytes over the bytes
        of a cached token, a capacity figure), this counts the buffers and the block
        rounding that grow with the batch, and the model's positions. A searched layout
        (``search`` not empty) counts what the search could reach: this region or the
        whole grid (the roomiest), whichever fits the longer context."""
        sides = [self.region] + ([0] if self.search and self.region else [])

        def fits(c: int) -> bool:
            return any(
                _build(self.cfg, self.arch, self.precision, self.placement, self.systems,
                       batch, c, self.gemv, self.reduce, r, self.ktree_k).worst_sram()["free"]
                >= 0 for r in sides
            )  # fmt: skip

        lo, hi = 0, int(self.cfg.n_positions)
        if fits(hi):
            return hi
        while hi - lo > 1:  # fits(lo) (or lo == 0), not fits(hi)
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo

    def prefill_chunk(self, prompt_len: int) -> int:
        """Prompt tokens a resident prefill processes at once: as many as the buffers of
        that many vectors fit beside the weights, the whole batch's K/V cache and the decode
        buffers, at most ``prompt_len`` and at least 1."""
        worst = self.worst_sram()
        per = sum(self.buffer_bytes(1).values())
        room = worst["capacity"] - worst["weights"] - worst["kv_cache"]
        return int(max(1, min(prompt_len, room // max(per, 1))))

    def worst_sram(self) -> dict:
        """:meth:`sram` of the most loaded system, with its index as ``system``."""
        rows = [dict(self.sram(i), system=i) for i in range(self.systems)]
        return max(rows, key=lambda r: r["total"])


def _orientations(g: OpGraph, gemv: str) -> dict[str, str]:
    """Axis each op's input vector is split over (see the module docstring)."""
    where = {"x": "col", "tokens": "col"}
    out: dict[str, str] = {}
    for op in (*g.prologue, *g.layer, *g.epilogue):
        src = op.inputs[0]
        axis = where.get(src, "col")
        if op.kind in ("linear", "lm_head"):
            if gemv == "rowcol":
                axis = "row"
            out[op.name] = axis
            res = "row" if axis == "col" else "col"
        elif op.kind == "attention":
            out[op.name] = axis
            res = axis
        else:
            out[op.name] = axis
            res = axis
        for o in op.outputs:
            where[o] = res
        if op.name in ("residual_2", "residual") and where.get("out") != "col":
            raise ConfigError(f"decode layout: the residual stream changed axis at {op.name}")
    return out


def make_layout(
    cfg: GPTConfig,
    arch: ArchConfig,
    *,
    precision: str,
    placement: str = "resident",
    systems: int | str = 1,
    batch: int = 1,
    max_context: int,
    gemv: str = "mesh",
    reduce: str = "auto",
    region: int | str = "auto",
    ktree_k: int = 2,
) -> DecodeLayout:
    """The decode layout of ``cfg`` for ``batch`` requests of up to ``max_context`` tokens.

    Args:
        systems: wafers in the pipeline, or ``"auto"``: the fewest whose SRAM holds the
            weights, the K/V cache and the buffers (on the whole-grid layout).
        reduce: ``tree``, ``chain``, ``ktree`` (WaferLLM's, ``ktree_k`` phases) or
            ``"auto"`` (searched with the region).
        region: ``"wafer"`` (every layer over the whole grid), an integer ``P`` (square
            ``P x P`` regions per layer group) or ``"auto"``: the region and reduce of the
            smallest analytic decode step among those that fit
            (:func:`gpt_workload.mappings.resident.search.search_layout`). Streaming
            placement always uses the whole grid.

    Raises:
        ConfigError: unknown placement, gemv, reduce or region; ``ktree_k`` outside 1 to
            4; more systems than layers; streaming with more than one system.
        FitError: it does not fit: the bytes per PE short (and, for ``"auto"``, that no
            number of systems up to the layer count fits).
    """
    if placement not in PLACEMENTS:
        raise ConfigError(f"placement={placement!r} unknown; allowed: {', '.join(PLACEMENTS)}")
    if gemv not in GEMVS:
        raise ConfigError(f"gemv={gemv!r} unknown; allowed: {', '.join(GEMVS)}")
    if reduce not in REDUCES + ("auto",):
        raise ConfigError(f"reduce={reduce!r} unknown; allowed: {', '.join(REDUCES)}, auto")
    ktree_algorithm(ktree_k)
    region = check_region(region, arch)
    if placement == "streaming":
        region, reduce = 0, ("tree" if reduce == "auto" else reduce)
    if region == "auto" or reduce == "auto":
        from gpt_workload.mappings.resident.search import search_layout

        return search_layout(cfg, arch, precision=precision, placement=placement,
                             systems=systems, batch=batch, max_context=max_context, gemv=gemv,
                             reduce=reduce, region=region, ktree_k=ktree_k)[0]  # fmt: skip
    L = cfg.n_layer
    knobs = (gemv, reduce, region, ktree_k)
    if systems == "auto":
        if placement == "streaming":
            return make_layout(
                cfg, arch, precision=precision, placement=placement, systems=1, batch=batch,
                max_context=max_context, gemv=gemv, reduce=reduce, region=0,
            )  # fmt: skip
        last = None
        for s in range(1, L + 1):
            lay = _build(cfg, arch, precision, placement, s, batch, max_context, *knobs)
            last = lay.worst_sram()
            if last["free"] >= 0:
                return lay
        _check_region_holds_a_layer(cfg, arch, precision, placement, knobs)
        raise FitError(
            f"{cfg.name} does not fit even on {L} systems (one layer each) of {arch.name}: "
            f"{-last['free']:,} B per PE short ({last['total']:,} B needed of "
            f"{last['capacity']:,} B: weights {last['weights']:,}, K/V cache "
            f"{last['kv_cache']:,}, buffers {last['buffers']:,}); lower the batch or the context"
        )
    systems = check_int("systems", systems, 1, note="or 'auto'")
    if systems > L:
        raise ConfigError(f"systems={systems} exceeds the model's {L} layers (one layer each)")
    if placement == "streaming" and systems != 1:
        raise ConfigError(
            f"systems={systems} with placement streaming: weights stream from MemoryX to one "
            "system; use placement resident for a pipeline of systems"
        )
    lay = _build(cfg, arch, precision, placement, systems, batch, max_context, *knobs)
    worst = lay.worst_sram()
    if worst["free"] < 0:
        need = None
        for s in range(systems + 1, L + 1):
            if _build(cfg, arch, precision, placement, s, batch, max_context,
                      *knobs).worst_sram()["free"] >= 0:  # fmt: skip
                need = s
                break
        hint = (
            f"it needs --systems {need} (or --systems auto)"
            if need is not None and placement == "resident"
            else "lower the batch or the context"
        )
        if need is None:
            _check_region_holds_a_layer(cfg, arch, precision, placement, knobs)
        raise FitError(
            f"{cfg.name} x batch {batch} x context {max_context} does not fit {systems} "
            f"system(s) of {arch.name} ({placement}): {-worst['free']:,} B per PE short on "
            f"system {worst['system']} ({worst['total']:,} B needed of {worst['capacity']:,} B: "
            f"weights {worst['weights']:,}, K/V cache {worst['kv_cache']:,}, buffers "
            f"{worst['buffers']:,}); {hint}"
        )
    return lay


def _check_region_holds_a_layer(cfg, arch, precision, placement, knobs) -> None:
    """Raise when a ``P x P`` region (``knobs[2]``; 0, the whole grid, is not checked) holding
    one layer, at batch 1 and context 1, overflows SRAM: the region, not the batch or the
    context, is what does not fit.

    Raises:
        FitError: naming ``--region``, the bytes per PE needed and usable.
    """
    region = knobs[2]
    if not region:
        return
    one = _build(cfg, arch, precision, placement, cfg.n_layer, 1, 1, *knobs).worst_sram()
    if one["free"] < 0:
        raise FitError(
            f"--region {region} is too small for {cfg.name} on {arch.name}: a {region} x "
            f"{region} region holding one layer (and the embedding or head) needs "
            f"{one['total']:,} B per PE of the {one['capacity']:,} B usable (weights "
            f"{one['weights']:,}, buffers {one['buffers']:,}), whatever the batch or context; "
            "use a larger --region side or --region auto"
        )


def check_region(region, arch: ArchConfig):
    """``region`` as ``"auto"``, 0 (``"wafer"``: the whole grid) or a square side ``P``.

    Raises:
        ConfigError: not ``auto``, ``wafer`` or an integer 1 to ``min(rows, cols)``.
    """
    if region in ("auto",):
        return region
    if region in ("wafer", 0):
        return 0
    side = min(arch.wafer.rows, arch.wafer.cols)
    try:
        ok = not isinstance(region, bool) and int(region) == float(region) and 1 <= int(region)
    except (TypeError, ValueError):
        ok = False
    if not ok or int(region) > side:
        raise ConfigError(f"--region {region!r} not allowed: expected auto, wafer or an integer "
                          f"side 1 to {side} (the {arch.name} grid's shorter side)")  # fmt: skip
    return int(region)


def _build(cfg, arch, precision, placement, systems, batch, max_context, gemv, reduce,
           region=0, ktree_k=2):  # fmt: skip
    g = build_graph(cfg)
    R, C = (region, region) if region else (arch.wafer.rows, arch.wafer.cols)
    KV = int(cfg.n_kv_heads)
    if KV <= R:
        band_rows, heads_per_band = R // KV, 1
    else:
        band_rows, heads_per_band = 1, math.ceil(KV / R)
    band_pes = band_rows * C
    block = max(math.ceil(batch * max_context / band_pes), 1)
    lay = DecodeLayout(
        cfg=cfg,
        arch=arch,
        precision=precision,
        placement=placement,
        gemv=gemv,
        reduce=reduce,
        systems=systems,
        batch=batch,
        max_context=max_context,
        rows=R,
        cols=C,
        graph=g,
        orient=_orientations(g, gemv),
        band_rows=band_rows,
        heads_per_band=heads_per_band,
        block_tokens=block,
        layers=split_layers(cfg.n_layer, systems),
        region=region,
        ktree_k=ktree_k,
    )
    if region:
        from gpt_workload.mappings.resident.regions import pack_regions

        lay.regions = pack_regions(lay)
    return lay
