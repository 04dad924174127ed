"""One spec per dataset, declared in the dataset's own module, and the registry every consumer
iterates (the CLI, the report, the dataset card, the trainer, the benchmarks, synthetic, tests).

    SPEC = register(DatasetSpec(
        name="dip", description=__doc__.splitlines()[0], paper=Paper("FocusDPO", "000"),
        config=DIPConfig, profiles=profiles_of("dip"), plans=plans, source=source,
        outputs=(Output(schema=SCHEMA, title="DIP preference quadruplets (FocusDPO)", sections="...",
                        card=cards.dip, charts=("encoder_cosine", ...), examples={...}, synthetic=random_sample,
                        report_context=None, review=borderline),),
        simulated=Simulated(inputs=simulated_inputs, n=160, time_scale=0.2)))

Every part is a required keyword: a spec that leaves one out fails at import with a line naming
the part; a part a dataset does not have is declared as such (None, or an empty mapping). Lookup
of a name no module declares is an error naming the known ones, never a default.

A pipeline that writes no dataset of its own (synthetic, train) registers a plain `Pipeline`, so
`subjectforge run` finds it by the same name.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Mapping

from schemas.contract import DatasetSchema
from schemas.registry import UnknownDataset, discover, register_schema

REQUIRED = object()  # a spec part that was not given


class SpecError(TypeError):
    """A dataset spec that is incomplete or malformed: one line naming the dataset and the part."""


def _check_parts(obj, owner: str) -> None:
    for f in fields(obj):
        value = getattr(obj, f.name)
        if value is REQUIRED:
            raise SpecError(f"{owner}: the spec has no {f.name!r} ({f.metadata.get('doc', '')})")
        kind = f.metadata.get("kind")
        if kind == "callable" and not callable(value):
            raise SpecError(f"{owner}: spec part {f.name!r} must be a function, got {type(value).__name__}")
        if kind == "callable?" and value is not None and not callable(value):
            raise SpecError(f"{owner}: spec part {f.name!r} must be a function or None, got {type(value).__name__}")


def part(doc: str, kind: str | None = None):
    return field(default=REQUIRED, metadata={"doc": doc, "kind": kind})


@dataclass(frozen=True)
class Paper:
    title: str  # the paper's name as the README and the card cite it
    seed: str  # its file number in ../shared/seeds (000 FocusDPO, 001 UPER, 002 WithAnyone, 003 IAPO)


@dataclass(frozen=True)
class Example:
    """How the trainer makes one training example of an objective from a decoded sample.
    make(sample, size, **context) -> dict of arrays; `members`: the only members decoded (None:
    all); `context(dataset_dir, options)` -> keyword arguments made once per run (MultiID's
    reference photos)."""

    make: Callable
    members: tuple[str, ...] | None = None
    context: Callable | None = None


@dataclass(frozen=True)
class Simulated:
    """A benchmark run on simulated accelerators (benchmarks/simulated.py): `inputs(root, n, side,
    seed)` writes synthetic inputs at real size and returns the `--set` overrides that point the gpu
    profile at them; `n` inputs at `time_scale` suit 2 CPU cores."""

    inputs: Callable
    n: int
    time_scale: float
    object_store_gb: float | None = None


@dataclass(frozen=True, kw_only=True)
class Output:
    """One dataset folder a pipeline writes (OUT/<schema.name>)."""

    schema: DatasetSchema = part("what a sample is on disk")
    title: str = part("the report's and the dataset card's title")
    sections: str = part("where in the seed paper this dataset is specified")
    card: Callable = part("the report's card of one sample: (row, members, context) -> report.cards.Card",
                          "callable")
    charts: tuple[str, ...] = part("the manifest columns whose histograms the report draws")
    examples: Mapping[str, Example] = part("trainer objective -> Example; {} when no objective trains on it")
    synthetic: Callable = part("a random sample of the schema for pipelines/synthetic.py: "
                               "(schema, key, rng, size) -> row", "callable")
    report_context: Callable | None = part("(dataset_dir, chosen manifest rows) -> what the cards need "
                                           "besides the sample (None: nothing)", "callable?")
    review: Callable | None = part("(manifest) -> the rows a person should check first (report/review.csv), "
                                   "or None", "callable?")

    def __post_init__(self):
        _check_parts(self, f"output {getattr(self.schema, 'name', '?')}")
        if not isinstance(self.schema, DatasetSchema):
            raise SpecError(f"output: spec part 'schema' must be a DatasetSchema, got {type(self.schema).__name__}")
        for objective, ex in self.examples.items():
            if not isinstance(ex, Example):
                raise SpecError(f"output {self.schema.name}: examples[{objective!r}] must be an Example")


@dataclass(frozen=True, kw_only=True)
class Pipeline:
    """A runnable pipeline: `subjectforge run NAME` and `python pipelines/NAME.py`."""

    name: str = part("the pipeline's name: subjectforge run NAME")
    description: str = part("one line: what it makes (its --help)")
    config: type = part("its typed config class (a runtime.config.PipelineConfig)")
    plans: Callable | None = None  # (cfg, workers) -> [Plan], for runtime.driver.run
    source: Callable | None = None  # (cfg, plan, out) -> a Ray Dataset of the plan's source columns
    main: Callable | None = None  # main(argv) -> dict; None: runtime.driver.run of this spec
    module: str = field(default="", compare=False)  # set by register: where it was declared

    def __post_init__(self):
        _check_parts(self, f"pipeline {getattr(self, 'name', '?')}")


@dataclass(frozen=True, kw_only=True)
class DatasetSpec(Pipeline):
    """Everything about one dataset, in one place."""

    paper: Paper = part("the seed paper it follows")
    outputs: tuple[Output, ...] = part("the dataset folders it writes, in the order its plans write them")
    profiles: Mapping[str, str] = part("profile -> YAML config path (tiny: CPU, random weights; gpu: real models)")
    plans: Callable = part("(cfg, workers) -> [Plan]: the DAGs, one per output, dependencies declared on them",
                           "callable")
    source: Callable = part("(cfg, plan, out) -> a Ray Dataset of the plan's source columns", "callable")
    simulated: Simulated = part("synthetic inputs for the benchmarks on simulated accelerators")

    def __post_init__(self):
        _check_parts(self, f"dataset {getattr(self, 'name', '?')}")
        if not self.outputs:
            raise SpecError(f"dataset {self.name}: the spec has no outputs")
        for name, path in self.profiles.items():
            if not Path(path).is_file():
                raise SpecError(f"dataset {self.name}: profile {name!r}: {path} is not a file")

    def output(self, name: str) -> Output:
        return next(o for o in self.outputs if o.schema.name == name)


_PIPELINES: dict[str, Pipeline] = {}


def register(spec: Pipeline) -> Pipeline:
    """Register a pipeline or dataset (and its outputs' schemas) from the module that declares it.
    A script run as __main__ and imported again registers the same file twice: that is one spec."""
    where = sys._getframe(1).f_globals.get("__file__") or ""  # the declaring module's file
    object.__setattr__(spec, "module", str(Path(where).resolve()) if where else "")
    old = _PIPELINES.get(spec.name)
    if old is not None and old.module != spec.module:
        raise SpecError(f"pipeline {spec.name!r} is declared twice: in {old.module} and {spec.module}")
    owners = {o.schema.name: p.name for p in _PIPELINES.values() if isinstance(p, DatasetSpec) for o in p.outputs}
    for o in getattr(spec, "outputs", ()):
        if owners.get(o.schema.name, spec.name) != spec.name:
            raise SpecError(f"dataset {o.schema.name!r} is written by both {owners[o.schema.name]} and {spec.name}")
        register_schema(o.schema)
    _PIPELINES[spec.name] = spec
    return spec


def pipelines() -> dict[str, Pipeline]:
    """Every runnable pipeline by name (datasets, synthetic, train)."""
    discover()
    return dict(sorted(_PIPELINES.items()))


def datasets() -> dict[str, DatasetSpec]:
    """Every dataset spec by name."""
    return {n: p for n, p in pipelines().items() if isinstance(p, DatasetSpec)}


def get_pipeline(name: str) -> Pipeline:
    if name not in _PIPELINES:
        discover()
    try:
        return _PIPELINES[name]
    except KeyError:
        raise UnknownDataset(f"unknown pipeline {name!r}; known: {', '.join(sorted(_PIPELINES))}") from None


def get_dataset(name: str) -> DatasetSpec:
    spec = get_pipeline(name)
    if not isinstance(spec, DatasetSpec):
        raise UnknownDataset(f"{name!r} is a pipeline, not a dataset; datasets: {', '.join(datasets())}")
    return spec


def outputs() -> dict[str, Output]:
    """Every dataset folder kind by name (dip, multiid, multiid_refs, ...)."""
    return {o.schema.name: o for spec in datasets().values() for o in spec.outputs}


def get_output(name: str) -> Output:
    known = outputs()
    try:
        return known[name]
    except KeyError:
        raise UnknownDataset(f"unknown dataset {name!r}; known: {', '.join(sorted(known))}") from None


def spec_of_output(name: str) -> DatasetSpec:
    """The dataset spec that writes the dataset folder kind `name`."""
    return next(s for s in datasets().values() if any(o.schema.name == name for o in s.outputs))


def trained_by(objective: str) -> list[str]:
    """The dataset folder kinds an objective trains on."""
    return sorted(n for n, o in outputs().items() if objective in o.examples)


def profiles_of(module_file: str, name: str) -> dict[str, str]:
    """configs/<name>.<profile>.yaml beside the project's pipelines: the built-in datasets' profiles."""
    root = Path(module_file).resolve().parents[1] / "configs"
    return {p.name.split(".")[1]: str(p) for p in sorted(root.glob(f"{name}.*.yaml"))}
