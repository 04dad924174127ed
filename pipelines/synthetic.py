"""Synthetic pipeline: random samples of any dataset schema through the real DAG shape (source ->
resume -> a model-shaped CPU stage -> encode -> shard writer). It exercises a cluster, the writer
and the readers without model weights, and is the demo until pipelines/dip.py exists.

    python pipelines/synthetic.py --config configs/synthetic.tiny.yaml --out ./out
"""
from __future__ import annotations

import sys
import time
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import ray

from schemas.batch import Reject, run_rows
from schemas.config import PipelineConfig
from schemas.job import drop_committed, parse_args, start_ray, write
from schemas.registry import get_schema
from stages.encode import encode_members
from stages.keys import sample_key
from stages.synthetic import random_sample

STAGES = ["generate", "encode"]


class SyntheticConfig(PipelineConfig):
    dataset: str = "dip"
    samples: int = 64
    image_size: int = 128
    batch_size: int = 8
    work_seconds: float = 0.0  # simulated model time per sample (fault and resume tests)
    poison_every: int = 0  # every Nth sample is bad data: rejected at generate / encode

    def output_fields(self) -> dict:
        return {"seed": self.seed, "dataset": self.dataset, "image_size": self.image_size}


def generate(row: dict, cfg: SyntheticConfig) -> dict:
    i = int(row["index"])
    if cfg.poison_every and i % cfg.poison_every == 1:
        raise Reject("poison", f"sample {i} is bad input by construction")
    time.sleep(cfg.work_seconds)
    rng = np.random.default_rng([cfg.seed, i])
    sample = random_sample(get_schema(cfg.dataset), row["key"], rng, cfg.image_size)
    if cfg.poison_every and i % cfg.poison_every == 2:
        first_image = next(m.name for m in get_schema(cfg.dataset).members if m.kind == "image")
        sample[first_image] = np.full((4, 4), np.nan)  # cannot be a JPEG: an encode reject
    return dict(sample, input=row["input"])


def build(cfg: SyntheticConfig, out: str) -> ray.data.Dataset:
    schema = get_schema(cfg.dataset)
    items = [{"key": sample_key({"index": i}, cfg.output_fields()), "index": i, "input": f"synthetic:{i}"}
             for i in range(cfg.samples)]
    ds, done = drop_committed(ray.data.from_items(items), out, schema.name)
    print(f"resume: {done} keys already committed in {out}/{schema.name}")
    ds = ds.map_batches(partial(run_rows, "generate", partial(generate, cfg=cfg)), batch_size=cfg.batch_size)
    return ds.map_batches(partial(run_rows, "encode", partial(encode_members, schema=schema)), batch_size=cfg.batch_size)


def main(argv=None) -> dict:
    cfg, out = parse_args(__doc__.splitlines()[0], SyntheticConfig, argv)
    start_ray(cfg)
    return write(build(cfg, out), out, get_schema(cfg.dataset), cfg, STAGES)


if __name__ == "__main__":
    main()
