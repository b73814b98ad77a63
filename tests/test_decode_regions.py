"""Resident decode on square regions (WaferLLM's decode layout): the packing of layers onto
regions, the hand-off between them, the region search, and the packet backend's agreement
on a region's decode step."""

from __future__ import annotations

import pytest

from gpt_workload.generation.timing import StepTimer
from gpt_workload.mappings.resident import lower_decode_step, make_layout
from gpt_workload.mappings.resident.regions import handoff_cycles, regions_per_system
from gpt_workload.mappings.resident.search import candidate_sides, search_layout
from gpt_workload.models import resolve_model
from wse_sim.arch import load_arch
from wse_sim.errors import ConfigError
from wse_sim.timing.analytic import run_analytic
from wse_sim.timing.event import run_event
from wse_sim.timing.packet import run_packet

GRID = load_arch("grid32")
WSE2 = load_arch("wse2")


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_region_decode_step_event_and_analytic_within_5pc_of_packet(tiny_checkpoints, family):
    """A 16 x 16 region with the K-tree all-reduce: the Program the backends time is the
    region's; the packet engine runs every K-tree message router by router."""
    cfg = resolve_model(str(tiny_checkpoints[family][0] / "config.json"))
    lay = make_layout(cfg, GRID, precision="fp16", max_context=40, region=16, reduce="ktree")
    assert (lay.rows, lay.cols) == (16, 16)
    prog = lower_decode_step(lay, [24])
    prog.validate()
    assert any(t.pattern.startswith("allreduce_ktree2") for k in prog.kernels
               for t in k.transfers)  # fmt: skip
    pk = run_packet(prog, GRID).total_s
    assert run_event(prog, GRID).total_s == pytest.approx(pk, rel=0.05)
    assert run_analytic(prog, GRID).total_s == pytest.approx(pk, rel=0.05)


def test_layers_pack_onto_regions_that_fit():
    """Llama-3-8B on 344 x 344 regions of the WSE-2: every layer once, in order, on the
    fewest regions whose SRAM holds them; the regions holding the embedding and the head hold
    no more layers than the others; one region fewer cannot hold them."""
    cfg = resolve_model("llama-3-8b")
    lay = make_layout(cfg, WSE2, precision="fp16", max_context=64, region=344, reduce="ktree")
    spans = lay.regions[0]
    assert [i for r in spans for i in r] == list(range(cfg.n_layer))
    assert len(spans) <= regions_per_system(lay) == (994 // 344) * (750 // 344)
    for load in lay.region_loads(0):
        assert lay._sram_of(load)["free"] >= 0
    n = [len(r) for r in spans]
    assert n[0] <= min(n[1:-1]) and n[-1] <= min(n[1:-1])
    fewer = len(spans) - 1  # the most layers one region fewer could hold, at best
    caps = sum(
        max(k for k in range(cfg.n_layer + 1)
            if k == 0 or lay._sram_of((k, j == 0, j == fewer - 1))["free"] >= 0)
        for j in range(fewer)
    )  # fmt: skip
    assert caps < cfg.n_layer


def test_handoff_closed_form_and_its_place_in_the_step():
    """Each crossing to the next region is ``P`` hops with the RAMP in and out ([HPDC24]:
    ``P h + 2 T_R``) and the vector slice's serialisation; a step pays one per region
    after the first on top of its Program."""
    cfg = resolve_model("llama-3-8b")
    lay = make_layout(cfg, WSE2, precision="fp16", max_context=64, region=344, reduce="ktree")
    fab = WSE2.fabric
    wavelets = -(-4096 // 344) * 2 / 4  # fp16 slice of d = 4096 over 344 columns
    want = 344 * fab.hop_latency_cycles + 2 * fab.ramp_latency_cycles + wavelets
    assert handoff_cycles(lay, 1) == pytest.approx(want)
    one = StepTimer(lay, "analytic").decode_step([40])
    whole = StepTimer(lay, "analytic", layers="all").decode_step([40])
    assert one[0] == pytest.approx(whole[0], rel=1e-9)
    prog = lower_decode_step(lay, [40])
    body = run_analytic(prog, WSE2).total_s
    n_cross = len(lay.regions[0]) - 1
    assert n_cross >= 1
    assert whole[0] == pytest.approx(body + n_cross * want / WSE2.pe.clock_hz, rel=1e-9)


def test_the_search_picks_the_fastest_fitting_candidate():
    """The search times every candidate that fits and returns the fastest; the whole-grid
    tree layout (the former default) is among them and is never faster."""
    cfg = resolve_model("llama-3-8b")
    lay, tried = search_layout(cfg, WSE2, precision="fp16", placement="resident", systems=1,
                               batch=1, max_context=64, gemv="mesh", reduce="auto",
                               region="auto", ktree_k=2)  # fmt: skip
    timed = [t for t in tried if t["step_s"] is not None]
    coarse = [t for t in tried if t["region"] in (0, *candidate_sides(WSE2))]
    assert {t["region"] for t in coarse} == {0, *candidate_sides(WSE2)}
    first = min((t for t in coarse if t["step_s"] is not None), key=lambda t: t["step_s"])
    fine = {t["region"] for t in tried} - {t["region"] for t in coarse}
    assert fine and fine <= set(candidate_sides(WSE2, near=first["region"]))
    best = min(timed, key=lambda t: t["step_s"])
    assert (lay.region, lay.reduce) == (best["region"], best["reduce"])
    old = next(t for t in tried if t["region"] == 0 and t["reduce"] == "tree")
    assert best["step_s"] <= old["step_s"]
    assert lay.worst_sram()["free"] >= 0
    again = StepTimer(lay, "analytic").decode_step([64])[0]
    assert again == pytest.approx(best["step_s"], rel=1e-12)


def test_wafer_region_is_the_whole_grid_layout():
    cfg = resolve_model("gpt-tiny")
    lay = make_layout(cfg, GRID, precision="fp16", max_context=40, region="wafer", reduce="tree")
    assert (lay.rows, lay.cols, lay.region, lay.regions) == (32, 32, 0, [])
    assert lay.plan().split_of("lm_head").reduce == "tree"


@pytest.mark.parametrize("bad", ["3.5", 0.5, 33, -1, "x"])
def test_bad_region_is_one_line(bad):
    with pytest.raises(ConfigError, match="--region") as e:
        make_layout(resolve_model("gpt-tiny"), GRID, precision="fp16", max_context=40,
                    region=bad)  # fmt: skip
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("systems", [1, "auto"])
def test_region_too_small_for_one_layer_is_named(systems):
    """A 7 x 7 region cannot hold one Llama-3-8B layer: the FitError names ``--region 7``
    and the bytes per PE needed against the usable bytes, which are the layout's own
    (the region holding one layer at batch 1, context 1), not the batch or the context."""
    from wse_sim.errors import FitError

    cfg = resolve_model("llama-3-8b")
    with pytest.raises(FitError) as e:
        make_layout(cfg, WSE2, precision="fp16", systems=systems, max_context=64, region=7,
                    reduce="tree")  # fmt: skip
    one = make_layout(cfg, WSE2, precision="fp16", systems=cfg.n_layer, max_context=1, region=0,
                      reduce="tree")  # fmt: skip
    msg = str(e.value)
    assert msg.startswith("--region 7 is too small") and "lower the batch" not in msg
    assert f"of the {one.worst_sram()['capacity']:,} B usable" in msg
    assert "--region auto" in msg
