"""Synthetic pipeline: random samples of any dataset schema through the real DAG shape (source ->
resume -> a model-shaped CPU stage -> encode -> shard writer). It exercises a cluster, the writer
and the readers without model weights.

    python pipelines/synthetic.py --config configs/synthetic.tiny.yaml --out ./out
"""
from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray

from configs.synthetic import SyntheticConfig
from runtime.driver import run
from runtime.plan import Plan, SchemaColumns
from runtime.registry import Pipeline, get_output, register
from stages import synthetic
from stages.encode import encode_members
from stages.keys import sample_key


def source(cfg: SyntheticConfig, plan: Plan | None = None, out: str | None = None) -> ray.data.Dataset:
    return ray.data.from_items([{"key": sample_key({"index": i}, cfg.output_fields()), "index": i,
                                 "input": f"synthetic:{i}"} for i in range(cfg.samples)])


def plan(cfg: SyntheticConfig, workers: dict | None = None) -> Plan:
    output = get_output(cfg.dataset)  # the dataset's spec: its schema and how a random sample of it looks
    schema = output.schema
    steps = Plan("synthetic", cfg, schema, source=("index",), workers=workers)
    steps.resume()
    steps.cpu("generate", partial(synthetic.generate, schema=schema, sample=output.synthetic, seed=cfg.seed,
                                  image_size=cfg.image_size, poison_every=cfg.poison_every,
                                  work_seconds=cfg.work_seconds),
              writes=tuple(sorted(SchemaColumns.of(schema).names)), batch_size=cfg.batch_size)
    steps.cpu("encode", partial(encode_members, schema=schema), batch_size=cfg.batch_size)
    return steps


def plans(cfg: SyntheticConfig, workers: dict | None = None) -> list[Plan]:
    return [plan(cfg, workers)]


SPEC = register(Pipeline(name="synthetic", description=__doc__.splitlines()[0], config=SyntheticConfig,
                         plans=plans, source=source))


def main(argv=None) -> dict:
    return run(SPEC, argv)


if __name__ == "__main__":
    main()
