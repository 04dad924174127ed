"""The cost model, the analytic bound and `pools: auto`, against values computed by hand."""
from __future__ import annotations

import pytest

import workers  # noqa: F401  (every role and its cost declared)
from runtime.config import ModelSpec, load_config
from runtime.costs import Cost, load_costs, slower
from runtime.pools import Pool, auto_split, bound, packs, size_pools, split_specs
from runtime.roles import costs as role_costs
from runtime.steps import Gather, Model

DEFAULT_COSTS = role_costs()  # each role's own, as its worker class declares it


class Stub:
    """A plan's steps without a pipeline: what bound and auto_split read."""

    def __init__(self, *steps):
        self.name, self.steps = "stub", list(steps)
        self.model_steps = [s for s in steps if isinstance(s, Model)]


def model(name, role, batch, actors=1, gpus=1.0, **kwargs):
    return Model(name, role=role, spec=ModelSpec(model=role, batch_size=batch, concurrency=actors, num_gpus=gpus),
                 kwargs=kwargs)


def test_a_batch_costs_per_call_plus_per_sample_over_its_share():
    c = Cost(per_sample=0.8, per_batch=2.0)
    assert c.batch_seconds(16) == pytest.approx(14.8)
    assert c.batch_seconds(16, gpus=0.5) == pytest.approx(29.6)  # half a device: twice as long
    assert c.per_sample_seconds(16) == pytest.approx(14.8 / 16)


def test_diffusion_cost_scales_with_steps_and_pixels():
    flux = DEFAULT_COSTS["text_to_image"]  # 6.5 s at 1024x1024, 28 steps
    assert flux.batch_seconds(1, {"height": 1024, "width": 1024, "steps": 28, "mode": "independent"}) == pytest.approx(6.5)
    assert flux.batch_seconds(1, {"height": 1024, "width": 1024, "steps": 28, "mode": "diptych"}) == pytest.approx(13.0)
    assert flux.batch_seconds(4, {"height": 512, "width": 512, "steps": 14}) == pytest.approx(4 * 6.5 / 4 / 2)
    fill = DEFAULT_COSTS["inpainting"]
    assert fill.batch_seconds(1, {"steps": 50}) == pytest.approx(6.5 * 50 / 28)


def test_bound_is_the_slowest_pool_and_a_barrier_adds_its_segments(tmp_path):
    costs = {"a": Cost(2.0), "b": Cost(0.5, per_batch=1.0), "c": Cost(1.0)}
    plan = Stub(model("A", "a", batch=4, actors=2, gpus=1.0),  # 2 x 4 / 8 s = 1.0 /s
                model("B", "b", batch=4, actors=1, gpus=0.5),  # 4 / ((1 + 2) / 0.5) = 0.667 /s
                Gather("cluster"),
                model("C", "c", batch=1))  # 1.0 /s
    b = bound(plan, costs)
    assert b.capacities == pytest.approx({"A": 1.0, "B": 4 / 6, "C": 1.0})
    assert [(steps, bottleneck) for steps, _, bottleneck in b.segments] == [(["A", "B"], "B"), (["C"], "C")]
    assert b.seconds_per_row == pytest.approx(1.5 + 1.0)
    assert b.samples_per_hour == pytest.approx(3600 / 2.5)
    # another split of the same pools: B on a whole device
    assert bound(plan, costs, {"B": Pool("B", "b", 1, 1.0, 4)}).capacities["B"] == pytest.approx(4 / 3)


def test_auto_split_by_hand():
    # A 2.5 GPU-s a sample (whole devices only), B 1.2 (quarters), C 0.1 (sixteenths), 8 GPUs.
    # At rate T: A needs ceil(2.5T) devices, B ceil(4.8T)/4, C ceil(1.6T)/16. T = 2.0 gives 5 + 2.5
    # + 0.25 = 7.75; any T above needs a sixth device for A: 8.75. So T* = 2.0 a second, and A
    # binds. B's 2.4 GPUs at T*: 5 halves (or 10 quarters, more actors); C's 0.2: one quarter is
    # the fewest GPUs (a sixteenth x 4 is as many GPUs in more actors).
    # Filling, in actors no smaller than those: B's 5 halves hold up to T = 2.5 / 1.2 = 2.083, a
    # sixth half would make 8.25 GPUs, so B binds next at 5 halves. C alone up to HEADROOM x T* =
    # 4: 0.4 GPUs, one half (two quarters are as many GPUs in more actors): 5 + 2.5 + 0.5 = 8.
    costs = {"a": Cost(2.5, min_gpus=1.0), "b": Cost(1.2, min_gpus=0.25), "c": Cost(0.1, min_gpus=0.0625)}
    plan = Stub(model("A", "a", batch=1), model("B", "b", batch=1), model("C", "c", batch=1))
    split = auto_split(plan, 8, costs)
    assert {s: (p.actors, p.gpus) for s, p in split.items()} == {"A": (5, 1.0), "B": (5, 0.5), "C": (1, 0.5)}
    b = bound(plan, costs, split)
    assert b.capacities == pytest.approx({"A": 2.0, "B": 2.5 / 1.2, "C": 5.0})
    assert b.samples_per_hour == pytest.approx(7200)
    specs = split_specs(plan, split)
    assert [(specs[s.name].concurrency, specs[s.name].num_gpus) for s in plan.steps] == [(5, 1.0), (5, 0.5), (1, 0.5)]


def test_auto_split_gives_light_pools_the_gpus_left_over():
    # IAPO's shape: two VLM pools (0.5 GPU-s a sample, halves) and a grounding pool between them
    # (0.02, quarters), 8 GPUs. T* = 7.0 a second: 7 halves each (3.5 GPUs) and grounding's 0.14 in
    # one quarter, 7.25 in all; at any T above, the VLMs need an 8th half each: 8.25. Grounding's
    # quarter is 0.25 / 0.02 = 12.5 a second, 1.79x T*; the spare GPUs take it to HEADROOM x T* =
    # 14 a second, 0.28 GPUs: one half (two quarters are as many GPUs in more actors), 7.5 in all.
    costs = {"vlm": Cost(0.5, min_gpus=0.5), "grounding": Cost(0.02, min_gpus=0.25)}
    plan = Stub(model("planner", "vlm", batch=1), model("ground", "grounding", batch=1), model("judge", "vlm", batch=1))
    split = auto_split(plan, 8, costs)
    assert {s: (p.actors, p.gpus) for s, p in split.items()} == {"planner": (7, 0.5), "ground": (1, 0.5),
                                                                "judge": (7, 0.5)}
    b = bound(plan, costs, split)
    assert b.capacities == pytest.approx({"planner": 7.0, "ground": 25.0, "judge": 7.0})
    # no spare at all: nothing moves
    tight = {"flux": Cost(3.0, min_gpus=1.0), "vlm": Cost(1.0, min_gpus=0.5)}
    two = Stub(model("gen", "flux", batch=1), model("judge", "vlm", batch=1))
    assert {s: p.total_gpus for s, p in auto_split(two, 4, tight).items()} == {"gen": 3.0, "judge": 1.0}


def test_auto_split_follows_the_cost():
    costs = {"flux": Cost(3.0, min_gpus=1.0), "vlm": Cost(1.0, min_gpus=0.5)}
    plan = Stub(model("gen", "flux", batch=1), model("judge", "vlm", batch=1))
    assert {s: p.total_gpus for s, p in auto_split(plan, 4, costs).items()} == {"gen": 3.0, "judge": 1.0}
    # the VLM 5x slower: 3 : 5 of 8 GPUs
    split = auto_split(plan, 8, slower(costs, "vlm", 5))
    assert {s: p.total_gpus for s, p in split.items()} == {"gen": 3.0, "judge": 5.0}


def test_cpu_pools_keep_their_config_and_too_many_pools_fail():
    costs = {"flux": Cost(3.0, min_gpus=1.0), "ocr": Cost(0.03)}
    plan = Stub(model("gen", "flux", batch=1), model("ocr", "ocr", batch=16, actors=8, gpus=0.0))
    assert set(auto_split(plan, 2, costs)) == {"gen"}
    three = Stub(*(model(f"g{i}", "flux", batch=1) for i in range(3)))
    with pytest.raises(ValueError, match="do not fit on 2 GPU"):
        auto_split(three, 2, costs)


def test_packing_of_shares():
    assert packs([1.0, 0.5, 0.5, 0.25, 0.25, 0.25, 0.25], 3)
    assert not packs([0.75, 0.75, 0.5], 2)  # 2.0 in all, but no two of them share a device


def test_a_cost_table_file_replaces_fields(tmp_path):
    f = tmp_path / "costs.yaml"
    f.write_text("vlm: {per_sample: 4.0}\nocr2: {per_sample: 0.5}\n")
    table = load_costs(f)
    assert table["vlm"].per_sample == 4.0 and table["vlm"].per_batch == DEFAULT_COSTS["vlm"].per_batch
    assert table["ocr2"] == Cost(0.5)
    f.write_text("vlm: {seconds: 4.0}\n")
    with pytest.raises(ValueError, match="unknown field"):
        load_costs(f)


def test_dip_gpu_profile_auto_split_fits_8_gpus_and_beats_its_fixed_pools():
    from configs.dip import DIPConfig
    from pipelines.dip import plan as dip_plan

    cfg = load_config(DIPConfig, "configs/dip.gpu.yaml")
    assert cfg.pools == "auto"
    plan = dip_plan(cfg).check()
    fixed = bound(plan, DEFAULT_COSTS)
    specs = size_pools(plan, 8, log=lambda *a: None)
    shares = [s.num_gpus for s in specs.values() for _ in range(s.concurrency)]
    assert packs(shares, 8) and sum(shares) <= 8
    # FLUX's diptych (13 s) and FLUX Fill's 50 steps (11.6 s) take nearly all of it
    gen, fill = specs["generate"], specs["inpaint"]
    assert gen.concurrency * gen.num_gpus + fill.concurrency * fill.num_gpus >= 6
    auto = bound(plan, DEFAULT_COSTS, specs=specs)  # the run's specs; the plan's stay as configured
    assert auto.samples_per_hour > fixed.samples_per_hour
    assert bound(plan, DEFAULT_COSTS).samples_per_hour == fixed.samples_per_hour


def test_subjectforge_plan_prints_the_split(capsys):
    from runtime.cli import main

    assert main(["plan", "dip", "--config", "configs/dip.gpu.yaml", "--gpus", "8"]) == 0
    out = capsys.readouterr().out
    assert "dip: pools: auto on 8 GPU(s), bound" in out
    lines = {line.split()[0]: line for line in out.splitlines() if " GPU = " in line}
    assert set(lines) == {"generate", "prefilter", "positive_check", "ground", "segment", "caption", "inpaint",
                          "negative_check"}
    assert "3 x 1 GPU" in lines["generate"]
    # the DAG above it shows each step's own pool
    assert "model text_to_image: TextToImage x3 actor(s), 1 CPU, 1 GPU" in out


def test_an_actors_cpus_follow_its_share_and_a_pool_too_big_for_the_cluster_is_named():
    from runtime.pools import held, shortfall

    plan = Stub(Model("judge", role="vlm", spec=ModelSpec(model="vlm", batch_size=1, num_gpus=1.0, num_cpus=2.0)))
    specs = split_specs(plan, {"judge": Pool("judge", "vlm", 6, 0.25, 1)})
    assert (specs["judge"].concurrency, specs["judge"].num_gpus, specs["judge"].num_cpus) == (6, 0.25, 0.5)
    specs = split_specs(plan, {"judge": Pool("judge", "vlm", 2, 1.0, 1)})  # again: from the configured spec
    assert specs["judge"].num_cpus == 2.0 and plan.steps[0].spec.concurrency == 1  # the plan is not touched
    assert held(plan, specs) == [(["judge"], 4.0, 2.0)]
    assert shortfall(plan, cpus=5, gpus=2, specs=specs) is None
    assert shortfall(plan, cpus=4, gpus=2, specs=specs) == (
        "stub: the pools of judge hold 4 CPUs and 2 GPUs; the cluster has 4 CPUs (one kept for the CPU stages) and 2 GPUs")
    assert "hold 4 CPUs and 2 GPUs" in shortfall(plan, cpus=16, gpus=1, specs=specs)
