"""IAPO: instance-level relabelling of preference pairs (seed 003 supplementary: the planner and judge
prompts of Fig. II, the weights of eq. 1).

    python pipelines/iapo.py --config configs/iapo.tiny.yaml --out ./out
    ray job submit --working-dir . -- python pipelines/iapo.py --config configs/iapo.gpu.yaml --out s3://bucket/iapo

A pair (caption, jpg_0, jpg_1, label_0 / label_1, as in Pick-a-Pic v2) -> the VLM planner lists the
instances matched in both images -> Grounding DINO boxes each in each image -> the VLM judge compares
the two crops of each instance, shown in a seeded A/B order -> rho per instance -> eq. 1 weight maps.
"""
from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray

from schemas.batch import cpu_stage, dataset_of
from schemas.iapo import SCHEMA
from schemas.job import drop_committed, run
from schemas.pipeline_configs import IAPOConfig
from schemas.reader import resolve_shards
from stages import iapo
from stages.encode import encode_members
from workers import tiny
from workers.base import Plan, Step, apply_steps
from workers.grounding import Grounding
from workers.vlm import VLM

WORKERS = {"vlm": VLM, "grounding": Grounding}
DIP_MEMBERS = ["win.jpg", "lose.jpg", "json.json"]


def source(cfg: IAPOConfig) -> ray.data.Dataset:
    """The pairs as rows of the Pick-a-Pic v2 layout, keyed by stage `read` (a task per block, so
    hashing the image bytes of a large Parquet never runs on the driver)."""
    to_pair = iapo.pair_row
    if cfg.source == "photos":
        rows = iapo.photo_pairs(cfg.photos_root, cfg.pairs_per_subject, cfg.seed)[: cfg.max_pairs]
        ds = dataset_of(rows)
    elif cfg.source == "pairs":
        if not cfg.pairs:
            raise ValueError("source: pairs needs `pairs` (a Parquet file or directory)")
        ds = ray.data.read_parquet(cfg.pairs)
    elif cfg.source == "dip":
        if not cfg.dip_dir:
            raise ValueError("source: dip needs `dip_dir` (OUT/dip of pipelines/dip.py)")
        fs, paths = resolve_shards(cfg.dip_dir)
        ds = ray.data.read_webdataset(paths, filesystem=fs, decoder=None, suffixes=DIP_MEMBERS)
        to_pair = lambda row, **kw: iapo.pair_row(iapo.dip_pair(row), **kw)  # noqa: E731
    else:
        raise ValueError(f"unknown source {cfg.source!r}: pairs | photos | dip")
    if cfg.max_pairs is not None:
        ds = ds.limit(cfg.max_pairs)
    return cpu_stage(ds, "read", partial(to_pair, fields=cfg.output_fields(), source=cfg.source))


def plan(cfg: IAPOConfig, workers: dict | None = None) -> list[Step]:
    """The stages in order; `workers` replaces a role's class (tests script the VLM and grounding)."""
    steps = Plan(cfg, dict(WORKERS, **(workers or {})))
    cpu, model = steps.cpu, steps.model

    cpu("label", iapo.global_label)  # ties before any image is opened
    cpu("load", partial(iapo.load_pair, max_side=cfg.max_side))
    cpu("planner_query", iapo.planner_query)
    model("planner", "vlm", images=["image_0", "image_1"], prompt="planner_prompt", output="planner_answer",
          max_new_tokens=cfg.vlm_max_new_tokens)
    cpu("instances", partial(iapo.matched_instances, max_instances=cfg.max_instances, qa=cfg.qa,
                             fallback=cfg.fallback_instance))
    for i in (0, 1):
        model(f"ground_{i}", "grounding", image=f"image_{i}", phrases="categories", box_threshold=cfg.box_threshold,
              text_threshold=cfg.text_threshold, boxes=f"grounded_{i}", box_scores=f"box_scores_{i}",
              box_labels=f"box_labels_{i}", phrase_boxes=f"phrase_boxes_{i}")
    cpu("boxes", iapo.instance_boxes)
    cpu("judge_queries", partial(iapo.judge_queries, seed=cfg.seed))
    model("judge", "vlm", images=["crops_a", "crops_b"], prompt="judge_prompts", output="judge_raw",
          max_new_tokens=cfg.vlm_max_new_tokens)
    cpu("preferences", partial(iapo.instance_preferences, qa=cfg.qa))
    if cfg.write_weights:
        cpu("weights", partial(iapo.weight_maps, w_pos=cfg.w_pos, w_neg=cfg.w_neg, cell=cfg.weight_grid))
    cpu("finalize", partial(iapo.finalize, fields=manifest_fields(cfg)))
    cpu("encode", partial(encode_members, schema=SCHEMA))
    return steps


def build(cfg: IAPOConfig, out: str, workers: dict | None = None) -> tuple[ray.data.Dataset, list[str]]:
    """The Ray Data DAG of plan(): CPU steps as tasks, model steps on fixed-size actor pools; resume
    drops committed keys right after they are computed, before any model work."""
    ds, done = drop_committed(source(cfg), out, SCHEMA.name)
    print(f"iapo: source {cfg.source}, {done} keys already committed")
    steps = plan(cfg, workers)
    return apply_steps(ds, steps), ["read"] + [s.name for s in steps]


def manifest_fields(cfg: IAPOConfig) -> dict:
    return {"w_pos": cfg.w_pos, "w_neg": cfg.w_neg, "weight_grid": cfg.weight_grid,
            "box_threshold": cfg.box_threshold, "text_threshold": cfg.text_threshold,
            "qa": "enabled" if cfg.qa else "disabled", "seed": cfg.seed,
            "model_vlm": cfg.vlm.model, "model_grounding": cfg.grounding.model}


def main(argv=None, workers: dict | None = None) -> dict:
    return run(__doc__.splitlines()[0], IAPOConfig, build, SCHEMA, argv, workers, prepare=tiny.ensure_for)


if __name__ == "__main__":
    main()
