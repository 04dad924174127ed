"""A fifth dataset from files in a temporary package only, installed as a plugin would be (an entry
point of the group `subjectforge.datasets`): its schema, config, one CPU step and one model role
with a tiny builder. `subjectforge plan / run / validate / report`, the dataset card, synthetic and
the trainer's reader all work on it without editing any module of the project; a spec or a role
missing a part fails with a line naming it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow

SPEC = '''
"""Virtual try-on pairs, a toy fifth dataset: a person, a garment and how well they fit."""
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa

from report.cards import Card
from report.images import thumbnail
from runtime.config import ModelSpec, PipelineConfig
from runtime.costs import Cost
from runtime.driver import run
from runtime.plan import Plan, step
from runtime.registry import DatasetSpec, Example, Output, Paper, Simulated, register
from runtime.roles import Builder, register_worker
from runtime.rows import Reject
from schemas.contract import DatasetSchema, Member
from stages.encode import encode_members
from stages.keys import sample_key
from stages.synthetic import random_sample
from workers.base import Worker, image_of

HERE = Path(__file__).resolve().parent
SCHEMA = DatasetSchema("tryon", 1, (Member("person", "jpg", "image"), Member("garment", "jpg", "image"),
                                    Member("json", "json", "json")),
                       (pa.field("prompt", pa.string()), pa.field("fit", pa.float32())))


class TryonConfig(PipelineConfig):
    n: int = 6
    size: int = 32
    tryon_scorer: ModelSpec = ModelSpec(model="out/tiny-models/tryon_scorer")  #CONFIG_FIELD


@register_worker
class FitScorer(Worker):
    """fit = tanh of the colour difference of person and garment through the model's weights."""

    role = "tryon_scorer"
    builder = Builder("tryon.builder", full=False)  #BUILDER
    cost = Cost(0.01, source="a toy")  #COST
    simulated = staticmethod(lambda w, row: {w.args["output"]: np.float32(0.5)})
    inputs = ("person", "garment")
    outputs = ("output",)

    def __init__(self, model: str, *, person: str = "person", garment: str = "garment", output: str = "fit",
                 **common):
        super().__init__(model, **common)
        self.weights = np.load(Path(model) / "weights.npy")  # what the builder saved
        self.person, self.garment, self.output = person, garment, output

    def check(self, row):
        return {"p": image_of(row, self.person), "g": image_of(row, self.garment)}

    def predict(self, inputs):
        return [{self.output: float(np.tanh((x["p"].mean((0, 1)) - x["g"].mean((0, 1))) @ self.weights / 255))}
                for x in inputs]


@step(reads=("index",), writes=("person", "garment", "prompt"), rejects=("seventh",))
def make_pair(row, size):
    i = int(row["index"])
    if i == 6:
        raise Reject("seventh", "input 6 is bad by construction")
    rng = np.random.default_rng(i)
    return dict(row, person=rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
                garment=rng.integers(0, 256, (size, size, 3), dtype=np.uint8), prompt=f"a person in garment {i}")


def plans(cfg, workers=None):
    p = Plan("tryon", cfg, SCHEMA, source=("index",), workers=workers)
    p.resume()
    p.cpu("pair", partial(make_pair, size=cfg.size))
    p.model("fit", "tryon_scorer")
    p.cpu("encode", partial(encode_members, schema=SCHEMA))
    return [p]


def source(cfg, plan, out):
    import ray

    return ray.data.from_items([{"key": sample_key({"i": i}, cfg.output_fields()), "index": i, "input": f"pair {i}"}
                                for i in range(cfg.n + 1)])


def card(row, sample, ctx):
    c = Card(row["key"], text=row.get("prompt") or "")
    c.pic("person", lambda: thumbnail(sample["person"]))
    c.pic("garment", lambda: thumbnail(sample["garment"]))
    c.facts = [("fit", f"{row['fit']:.3f}")]
    return c


def example(sample, size):
    return {"prompt": sample["json"]["prompt"], "target": sample["person"][:size, :size], "ref": sample["garment"]}


SPEC = register(DatasetSpec(
    name="tryon", description=__doc__.splitlines()[0], paper=Paper("A try-on paper", "999"),
    config=TryonConfig, profiles={"tiny": str(HERE / "tryon.tiny.yaml")}, plans=plans, source=source,
    outputs=(Output(schema=SCHEMA, title="Virtual try-on pairs", sections="section 1",
                    card=card,  #CARD
                    charts=("fit",),  #CHARTS
                    examples={"sft": Example(example)},  #EXAMPLES
                    synthetic=random_sample, report_context=None, review=None),),
    simulated=Simulated(inputs=lambda root, n, side, seed: [f"n={n}"], n=8, time_scale=1.0)))
'''

BUILDER = '''
"""The tiny scorer: three random weights, saved as the worker loads them."""
from pathlib import Path

import numpy as np


def build_tiny(directory, seed=0):
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "weights.npy", np.random.default_rng(seed).standard_normal(3))
    return directory
'''


def plugin(tmp_path: Path, drop: str | None = None) -> dict:
    """The package `tryon` in tmp_path/site with an entry point, as `pip install` would leave it; the
    environment a subprocess needs to find it. `drop`: the line marked #DROP left out."""
    site = tmp_path / "site"
    (site / "tryon").mkdir(parents=True)
    spec = "\n".join(line for line in SPEC.splitlines() if not (drop and line.endswith(f"#{drop}")))
    (site / "tryon" / "__init__.py").write_text("")
    (site / "tryon" / "spec.py").write_text(textwrap.dedent(spec))
    (site / "tryon" / "builder.py").write_text(BUILDER)
    model = (f"tryon_scorer: {{model: {tmp_path / 'models' / 'tiny-models' / 'tryon_scorer'}, dtype: float32, "
             f"batch_size: 2, num_cpus: 0.5}}\n")
    (site / "tryon" / "tryon.tiny.yaml").write_text("profile: tiny\nn: 6\nray: {num_cpus: 4}\n"
                                                    "write: {target_shard_samples: 4}\n"
                                                    + ("" if drop == "CONFIG_FIELD" else model))
    info = site / "tryon-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tryon\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[subjectforge.datasets]\ntryon = tryon.spec\n")
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]), RAY_ADDRESS="")


def cli(env, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "runtime.cli", *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=timeout)


# the commands a user runs on the new dataset, as `subjectforge ...` runs them, in one process (one
# Ray for the two runs): each prints its output, then "== <command>: exit <code>"
COMMANDS = """
import sys
from runtime.cli import main
for args in {commands!r}:
    try:
        code = main(args)
    except SystemExit as e:
        code = e.code
    print("== " + args[0] + " " + args[1] + ": exit " + str(code), flush=True)
from trainer.data import examples
got = list(examples({out!r}, 16, objective="sft", epochs=1))
print("== reader:", len(got), sorted(got[0]), got[0]["target"].shape, flush=True)
"""


def test_a_fifth_dataset_from_its_own_files_only(tmp_path):
    env = plugin(tmp_path)
    config, out = str(tmp_path / "site" / "tryon" / "tryon.tiny.yaml"), tmp_path / "out"
    commands = [["plan", "tryon", "--config", config],
                ["run", "tryon", "--config", config, "--out", str(out)],
                ["validate", str(out / "tryon")],
                ["report", str(out / "tryon")],
                ["run", "synthetic", "--config", str(ROOT / "configs/synthetic.tiny.yaml"), "--out", str(tmp_path / "syn"),
                 "--set", "dataset=tryon", "--set", "samples=5"],
                ["validate", str(tmp_path / "syn" / "tryon")]]
    ran = subprocess.run([sys.executable, "-c", COMMANDS.format(commands=commands, out=str(out / "tryon"))],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    said = ran.stdout
    assert ran.returncode == 0, said[-3000:] + ran.stderr[-3000:]
    for command in ("plan tryon", "run tryon", "validate " + str(out / "tryon"), "report " + str(out / "tryon"),
                    "run synthetic", "validate " + str(tmp_path / "syn" / "tryon")):
        assert f"== {command}: exit 0" in said, said[-3000:]

    assert "model tryon_scorer: FitScorer x1 actor(s)" in said and "rejects  seventh" in said  # the plan
    assert (tmp_path / "models" / "tiny-models" / "tryon_scorer" / "weights.npy").is_file()  # its builder ran
    info = json.loads((out / "tryon" / "dataset.json").read_text())
    assert info["counts"] == dict(info["counts"], samples=6, rejects=1)
    page = (out / "tryon" / "report" / "index.html").read_text()
    assert "Virtual try-on pairs" in page and "6 samples on 1 pages" in said
    assert page.count(">garment<") == 6  # the dataset's own card: a garment picture per sample
    card = (out / "tryon" / "README.md").read_text()
    assert "Virtual try-on pairs" in card and "A try-on paper (seed 999: section 1)" in card
    assert "- samples: 6" in card and "| pair | seventh | 1 |" in card
    assert json.loads((tmp_path / "syn" / "tryon" / "dataset.json").read_text())["counts"]["samples"] == 5
    assert "== reader: 6 ['prompt', 'ref', 'target'] (16, 16, 3)" in said


@pytest.mark.parametrize("drop, words", [
    ("CHARTS", "dataset module tryon.spec: output tryon: the spec has no 'charts'"),  # at import
    ("COST", "step 'fit': model role 'tryon_scorer' declares no cost"),  # at the plan's check
])
def test_a_part_left_out_is_named_in_one_line(tmp_path, drop, words):
    env = plugin(tmp_path, drop=drop)
    out = cli(env, "plan", "tryon", "--config", str(tmp_path / "site" / "tryon" / "tryon.tiny.yaml"))
    assert out.returncode == 2 and words in out.stderr, out.stderr[-2000:]
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr  # one line, no traceback


def test_every_part_of_a_spec_is_required_and_named():
    """Each part of Output and DatasetSpec left out is a SpecError naming it (in this process: the
    specs are built and never registered)."""
    import dataclasses

    from runtime.registry import DatasetSpec, Output, SpecError, get_dataset

    dip = get_dataset("dip")
    output = dip.outputs[0]
    for f in dataclasses.fields(Output):
        parts = {g.name: getattr(output, g.name) for g in dataclasses.fields(Output) if g.name != f.name}
        with pytest.raises(SpecError, match=f"output .*: the spec has no '{f.name}'"):
            Output(**parts)
    required = [f.name for f in dataclasses.fields(DatasetSpec) if f.name not in ("main", "module")]
    for name in required:
        parts = {g: getattr(dip, g) for g in required if g != name}
        with pytest.raises(SpecError, match=f"the spec has no '{name}'"):
            DatasetSpec(**parts)
    with pytest.raises(SpecError, match="spec part 'card' must be a function"):
        dataclasses.replace(output, card="dip")
