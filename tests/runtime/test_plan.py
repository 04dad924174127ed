"""runtime.plan: declared columns checked before anything runs, temporary columns dropped after
their last reader, undeclared writes and programming errors failing loudly, `subjectforge plan`."""
from __future__ import annotations

from functools import partial

import pyarrow as pa
import pytest

from configs import DIPConfig, SyntheticConfig
from runtime.config import load_config
from runtime.execute import local, on_ray
from runtime.plan import CPU_BATCH_SIZE, Plan, PlanError, order, step
from runtime.registry import get_pipeline, pipelines
from runtime.rows import Reject, UndeclaredColumn, batch_of, run_step
from runtime.steps import Batch, Cpu, Model
from schemas.contract import DatasetSchema, Member
from schemas.registry import get_schema
from tests.conftest import ROOT

PIPELINES = [n for n, p in pipelines().items() if p.plans is not None]


@step(reads=("a",), writes=("b", "scratch"), rejects=("negative",))
def double(row):
    if row["a"] < 0:
        raise Reject("negative", str(row["a"]))
    return dict(row, b=2 * row["a"], scratch="x")


@step(reads=("b", "scratch"), writes=("c",))
def plus_one(row):
    return dict(row, c=row["b"] + 1)


@step(reads=("a",), writes=("b",))
def sneaky(row):
    return dict(row, b=1, unlisted=2)


@step(reads=("a",))
def buggy(row):
    return row["no_such_column"]


# a dataset whose samples are only their json member and one manifest column
JSON_ONLY = DatasetSchema("t", 1, (Member("json", "json", "json"),), (pa.field("prompt", pa.string()),))


def tiny_plan(*steps_) -> Plan:
    """A plan whose source has `a`, a manifest column `prompt` and a column nobody reads."""
    p = Plan("t", SyntheticConfig(), JSON_ONLY, source=("a", "unread", "prompt"))
    for name, fn in steps_:
        p.cpu(name, fn)
    return p


def test_columns_are_checked_and_temporaries_dropped_after_their_last_reader():
    p = tiny_plan(("double", double), ("plus_one", plus_one)).check()
    drops = {s.name: s.drop for s in p.steps}
    # `unread` and `a` go after the first step (nothing later reads them), `b` / `scratch` after their
    # reader; `prompt` is a manifest column of the schema: it stays to the end
    assert set(drops["double"]) == {"a", "unread"} and set(drops["plus_one"]) == {"b", "scratch", "c"}
    rows = [{"key": "k1", "input": "i1", "a": 1, "unread": 0, "prompt": "p"},
            {"key": "k2", "input": "i2", "a": -1, "unread": 0, "prompt": "p"}]
    out = {r["key"]: r for r in local(p, rows)[0]}
    assert out["k1"]["prompt"] == "p" and not {"a", "b", "scratch", "c", "unread"} & set(out["k1"])
    assert out["k2"]["reject_stage"] == "double" and out["k2"]["reject_reason"] == "negative"
    assert out["k1"]["time_double"] >= 0 and out["k1"]["time_plus_one"] >= 0


def test_a_read_no_step_writes_is_an_error_naming_step_and_column():
    with pytest.raises(PlanError, match=r"step 'plus_one' reads column 'b'"):
        tiny_plan(("plus_one", plus_one)).check()
    with pytest.raises(PlanError, match=r"no gather step before it provides"):
        p = tiny_plan(("double", double))
        p.cpu("uses", plus_one, needs=("centers",))
        p.check()
    with pytest.raises(PlanError, match="requires member 'ref_clean'"):  # the uper schema's member
        Plan("t", SyntheticConfig(), get_schema("uper"), source=("a",)).check()


def test_undeclared_write_and_programming_errors_fail_instead_of_rejecting():
    batch = batch_of([{"key": "k", "input": "i", "a": 1}])
    with pytest.raises(UndeclaredColumn, match=r"step 'sneaky' wrote column\(s\) \['unlisted'\]"):
        run_step("sneaky", batch, lambda rows: [sneaky(r) for r in rows], ("b",))
    with pytest.raises(KeyError, match="no_such_column"):
        local(tiny_plan(("buggy", buggy)), [{"key": "k", "input": "i", "a": 1}])
    # data errors stay rejects: a ValueError from a value that cannot be read
    @step(reads=("a",))
    def unreadable(row):
        return dict(row, a=int("not a number"))

    (out,), _ = local(tiny_plan(("unreadable", unreadable)), [{"key": "k", "input": "i", "a": 1}])
    assert out["reject_reason"] == "bad_data" and "ValueError" in out["reject_detail"]


def test_a_bug_in_a_ray_stage_fails_the_run_with_its_traceback(ray_local):
    ds = ray_local.data.from_items([{"key": f"k{i}", "input": "i", "a": i} for i in range(20)])
    p = tiny_plan(("buggy", buggy))
    with pytest.raises(Exception, match="no_such_column") as e:
        on_ray(p, ds, "/nonexistent-out", log=lambda *a: None)[0].take_all()
    assert "KeyError" in str(e.value) or isinstance(e.value, KeyError)


def miswired_dip(monkeypatch):
    """The DIP plan with its negative check reading `loser`, a column no step writes."""
    from pipelines import dip

    model = Plan.model

    def wrong(self, name, role, **kwargs):
        if name == "negative_check":
            kwargs["images"] = ["ref", "loser"]
        model(self, name, role, **kwargs)

    monkeypatch.setattr(Plan, "model", wrong)
    return dip


def test_a_miswired_dip_plan_fails_before_ray_or_any_model(monkeypatch, tmp_path):
    from runtime import driver

    dip = miswired_dip(monkeypatch)
    started = []
    monkeypatch.setattr(driver, "start_ray", lambda *a: started.append("ray"))
    monkeypatch.setattr("runtime.roles.ensure_for", lambda cfg: started.append("models"))
    with pytest.raises(PlanError) as e:
        dip.main(["--config", str(ROOT / "configs/dip.tiny.yaml"), "--out", str(tmp_path)])
    assert "'negative_check'" in str(e.value) and "'loser'" in str(e.value)
    assert started == [] and not (tmp_path / "dip").exists()


def test_every_model_step_declares_its_worker_columns():
    from pipelines import dip

    cfg = load_config(DIPConfig, ROOT / "configs/dip.gpu.yaml")
    steps = {s.name: s for s in dip.plan(cfg).check().steps}
    assert steps["inpaint"].reads == ("win", "mask", "inpaint_prompt", "seed")
    assert steps["inpaint"].writes == ("lose", "inpaint_mask")
    assert steps["generate"].writes == ("ref", "win") and steps["positive_check"].reads == ("ref", "win", "rubric_prompts")
    with pytest.raises(PlanError, match="takes no argument"):
        dip.plan(cfg).model("x", "vlm", image_column="ref")


@pytest.mark.parametrize("pipeline", PIPELINES)
def test_subjectforge_plan_prints_every_step(pipeline, capsys):
    from runtime.cli import main

    code = main(["plan", pipeline, "--config", str(ROOT / f"configs/{pipeline}.tiny.yaml")])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    spec = get_pipeline(pipeline)
    cfg = load_config(spec.config, ROOT / f"configs/{pipeline}.tiny.yaml")
    for plan in spec.plans(cfg, None):
        for i, s in enumerate(plan.check().steps, 1):
            assert f"{i:>2}. {s.name} " in printed.out
            if s.reads:
                assert "reads    " + ", ".join(s.reads) in printed.out
            if s.writes:
                assert "writes   " + ", ".join(s.writes) in printed.out


def test_subjectforge_plan_usage_errors_exit_2_with_one_line(tmp_path, capsys):
    from runtime.cli import main

    for args, words in ((["dip", "--config", str(tmp_path / "none.yaml")], "no such file"),
                        (["dip", "--config", str(ROOT / "configs/dip.tiny.yaml"), "--set", "no_such_field=1"],
                         "no_such_field"),
                        (["nope", "--config", str(ROOT / "configs/dip.tiny.yaml")], "unknown pipeline"),
                        (["train", "--config", str(ROOT / "configs/train.tiny.yaml")], "train has no plan")):
        code, err = main(["plan", *args]), capsys.readouterr().err
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    # the CLI is the one way in: a path is no pipeline name
    assert main(["run", "pipelines/dip.py"]) == 2 and "unknown pipeline 'pipelines/dip.py'" in capsys.readouterr().err


def test_batch_steps_take_gathered_values_and_reject_per_row():
    @step(reads=("a",), writes=("scaled",))
    def scale(rows, factor):
        return [Reject("zero", "") if r["a"] == 0 else dict(r, scaled=r["a"] * factor) for r in rows]

    p = Plan("t", SyntheticConfig(), JSON_ONLY, source=("a",))
    p.gather("total", lambda rows: {"factor": sum(r["a"] for r in rows)}, reads=("a",), provides=("factor",))
    p.batch("scale", scale, needs=("factor",))
    with pytest.raises(PlanError, match="declares no columns"):  # every stage function declares them
        p.cpu("keep", partial(lambda row: row))
    seen = {}
    p.gather("see", lambda rows: {"seen": seen.update({r["key"]: r["scaled"] for r in rows})},
             reads=("key", "scaled"), provides=("seen",))
    p.cpu("done", step()(lambda row: row))
    out = {r["key"]: r for r in local(p.check(), [{"key": f"k{a}", "input": "", "a": a} for a in (0, 1, 2)])[0]}
    assert seen == {"k1": 3, "k2": 6}  # factor = 0 + 1 + 2, gathered before the batch step ran; k0 rejected
    assert out["k0"]["reject_reason"] == "zero" and out["k2"]["time_scale"] >= 0
    assert "scaled" not in out["k1"]  # a temporary: dropped after its last reader


IMAGES = DatasetSchema("t", 1, (Member("image", "npy", "array"), Member("json", "json", "json")), ())


@step(reads=("a",), writes=("image",))
def decode(row):
    return dict(row, image=[float(row["a"])] * 1000)  # stands for a decoded photo


@step(reads=("image",), writes=("size",))
def measure(row):
    return dict(row, size=len(row["image"]))


def image_plan() -> Plan:
    """decode -> measure -> a gather -> decode again -> the schema's image member."""
    p = Plan("t", SyntheticConfig(), IMAGES, source=("a",))
    p.cpu("decode", decode)
    p.cpu("measure", measure)
    p.gather("total", lambda rows: {"total": sum(r["size"] for r in rows)}, reads=("size",), provides=("total",))
    p.cpu("reload", decode)
    p.cpu("done", step(reads=("image",))(lambda row: row))
    return p.check()


def test_a_column_written_again_later_does_not_cross_a_gather(ray_local):
    """The schema stores `image`, but `reload` writes it again after the gather: the decoded value
    is dropped after its last reader before the barrier, so the barrier never holds every image."""
    p = image_plan()
    assert {s.name: s.drop for s in p.steps}["measure"] == ("image",)
    import ray

    ds, run = on_ray(p, ray.data.from_items([{"key": f"k{a}", "input": "", "a": a} for a in range(20)]), None)
    assert "image" not in run.barriers["total"] and "size" in run.barriers["total"]
    assert run.gathered["total"] == 20_000 and not hasattr(p, "gathered")  # what a run learns is the run's
    rows = ds.take_all()
    assert len(rows) == 20 and all(len(r["image"]) == 1000 for r in rows)


def test_multiid_barriers_hold_no_image():
    """Both MultiID gathers materialize every row: the decoded photo must not be among their
    columns (it is decoded again after them), the light columns they read must."""
    from configs.multiid import MultiIDConfig
    from pipelines.multiid import plans

    bank, groups = plans(load_config(MultiIDConfig, ROOT / "configs" / "multiid.gpu.yaml"))
    held = bank.columns_at("cluster")
    assert "image" not in held and {"key", "identity", "embedding"} <= held
    held = groups.columns_at("holdout")
    assert "image" not in held and "caption_raw" not in held and {"identity", "paired", "reached", "embeddings"} <= held
    assert "image" in groups.columns_at("finalize")  # decoded again for the shard
    # a CPU step bundles batch_size rows into one task: with the photo still decoded that is
    # batch_size x ~2.4 MB in one task's memory (retrieve once took 256 rows: 600 MB)
    for p in (bank, groups):
        wide = {s.name: s.batch_size for s in p.steps if isinstance(s, Cpu) and "image" in p.columns_at(s.name)
                and s.batch_size > CPU_BATCH_SIZE}
        assert not wide, f"{p.name}: {wide} batch more than {CPU_BATCH_SIZE} decoded photos"


def test_a_role_s_custom_resources_place_its_pool_and_a_missing_one_is_named(ray_local):
    """`<role>.resources` reaches map_batches (Ray places the actors on nodes that offer it); a
    resource the cluster lacks is named before anything runs, as the actors would wait for it."""
    from pipelines import dip

    cfg = load_config(DIPConfig, ROOT / "configs/dip.tiny.yaml", ["vlm.resources={gpu_node: 0.5}"])
    (plan,) = dip.plans(cfg)
    steps = {s.name: s for s in plan.check().steps}
    assert steps["positive_check"].pool_args(cfg.vlm)["resources"] == {"gpu_node": 0.5}
    assert "resources" not in steps["ground"].pool_args(cfg.grounding)
    assert "0.5 gpu_node" in plan.describe()

    class Named(Exception):
        pass

    def log(line):
        if "gpu_node" in line:
            raise Named(line)  # stop before the DAG is built: a gather would run it

    with pytest.raises(Named, match=r"needs 0.5 gpu_node, the cluster has 0: its actors wait until a node offers it"):
        on_ray(plan, ray_local.data.from_items([{"key": "k"}]), "/nonexistent-out", log=log)


# --- a plan is a declaration; executors bind its steps; roles are declared once ------------------------

@step(reads=("a",), writes=("b",))
def add_one(row):
    return dict(row, b=row["a"] + 1)


def test_a_checked_plan_does_not_change_and_steps_are_kinds():
    p = tiny_plan(("double", double)).check()
    with pytest.raises(PlanError, match="checked; step 'late' comes too late"):
        p.cpu("late", plus_one)
    (s,) = p.steps
    assert isinstance(s, Cpu) and not isinstance(s, Batch) and set(s.drop) == {"a", "unread", "b", "scratch"}
    with pytest.raises(Exception):  # frozen: a run cannot rewrite a step
        s.drop = ()


def test_ray_and_local_executors_give_the_same_rows(ray_local):
    """One meaning per step kind: the same plan bound by Ray Data and by the local loop."""
    p = Plan("t", SyntheticConfig(), JSON_ONLY, source=("a", "prompt"))
    p.cpu("double", double)
    p.gather("total", lambda rows: {"total": sum(r["b"] for r in rows)}, reads=("b",), provides=("total",))

    @step(reads=("b",), writes=("share",))
    def share(rows, total):
        return [dict(r, share=r["b"] / total) for r in rows]

    p.batch("share", share, needs=("total",))
    p.cpu("plus_one", plus_one, optional=("share",))
    rows = [{"key": f"k{a}", "input": "", "a": a, "prompt": "p"} for a in (-1, 1, 2, 3)]
    mine, run_l = local(p, rows)
    ds, run_r = on_ray(p, ray_local.data.from_items(rows), None, log=lambda *a: None)
    theirs = {r["key"]: r for r in ds.take_all()}
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith("time_")}  # noqa: E731
    assert {r["key"]: strip(r) for r in mine} == {k: strip(r) for k, r in theirs.items()}
    assert run_l.gathered == run_r.gathered == {"total": 12}  # 2 + 4 + 6; k-1 rejected by `double`
    assert theirs["k-1"]["reject_reason"] == "negative"


def test_plans_with_dependencies_are_ordered_and_their_inputs_checked():
    bank = Plan("bank", SyntheticConfig(), JSON_ONLY, source=("a", "prompt"))
    bank.gather("centers", lambda rows: {"centers": 1}, reads=("a",), provides=("centers",))
    bank.cpu("done", step(reads=("a",))(lambda row: row))
    groups = Plan("groups", SyntheticConfig(), JSON_ONLY, source=("a", "prompt"), inputs=("centers", "before"),
                  depends=("bank",))
    groups.before("previous", lambda out: {"before": out}, provides=("before",))
    groups.cpu("uses", step(reads=("a",))(lambda row, centers, before: row), needs=("centers", "before"))
    assert [p.name for p in order([groups, bank])] == ["bank", "groups"]

    lonely = Plan("lonely", SyntheticConfig(), JSON_ONLY, source=("a", "prompt"), inputs=("centers",))
    lonely.cpu("uses", step(reads=("a",))(lambda row, centers: row), needs=("centers",))
    with pytest.raises(PlanError, match=r"lonely: inputs \['centers'\] are provided by no plan it depends on"):
        order([lonely])
    a = Plan("a", SyntheticConfig(), JSON_ONLY, source=("a",), depends=("b",))
    b = Plan("b", SyntheticConfig(), JSON_ONLY, source=("a",), depends=("a",))
    with pytest.raises(PlanError, match="a cycle"):
        order([a, b])
    with pytest.raises(PlanError, match=r"unknown plan\(s\) \['nope'\]"):
        order([Plan("c", SyntheticConfig(), JSON_ONLY, source=("a",), depends=("nope",))])


def test_a_model_role_missing_a_cost_builder_or_config_field_is_named(monkeypatch):
    import dataclasses

    from pipelines import dip
    from runtime import roles

    cfg = load_config(DIPConfig, ROOT / "configs/dip.tiny.yaml")
    vlm = roles.ROLES["vlm"]
    monkeypatch.setitem(roles.ROLES, "vlm", dataclasses.replace(vlm, cost=None))
    with pytest.raises(PlanError, match=r"step 'positive_check': model role 'vlm' declares no cost"):
        dip.plan(cfg).check()
    monkeypatch.setitem(roles.ROLES, "vlm", dataclasses.replace(vlm, builder=None))
    with pytest.raises(PlanError, match="model role 'vlm' declares no builder"):
        dip.plan(cfg).check()
    monkeypatch.setitem(roles.ROLES, "vlm", vlm)
    with pytest.raises(PlanError, match=r"step 'x': no model role 'teleporter' is declared"):
        dip.plan(cfg).model("x", "teleporter")
    with pytest.raises(PlanError, match=r"the config \(SyntheticConfig\) has no model spec field 'vlm'"):
        Plan("t", SyntheticConfig(), JSON_ONLY, source=("a",)).model("x", "vlm")
    steps = {s.name: s for s in dip.plan(cfg).check().steps}
    assert isinstance(steps["positive_check"], Model) and steps["positive_check"].cls is vlm.worker
