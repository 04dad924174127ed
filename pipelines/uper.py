"""UPER: SFT pairs with the reference on a white background, checked by a VLM, scored by the subject
reward R_sub (seed 001, sections 3.2.1 and 3.1.3, appendices B.1 and B.4).

    python pipelines/uper.py --config configs/uper.tiny.yaml --out ./out
    ray job submit --working-dir . -- python pipelines/uper.py --config configs/uper.gpu.yaml --out s3://bucket/uper
"""
from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import ray

import workers as model_roles  # noqa: F401  (every model role declared: the plan looks its roles up)
from configs.uper import UPERConfig
from report import cards
from runtime.driver import run
from runtime.plan import Plan
from runtime.inputs import parent_of, read_rows
from runtime.registry import DatasetSpec, Example, Output, Paper, Simulated, profiles_of, register
from runtime.rows import dataset_of
from schemas.reader import resolve_shards
from schemas.uper import SCHEMA
from stages import uper
from stages.encode import encode_members
from stages.synthetic import random_sample
from trainer.data import rl_example, uper_example
from workers.simulated import jpeg_bytes, parquet_list, photo


# --- inputs ------------------------------------------------------------------------------------

def source(cfg: UPERConfig, plan: Plan | None = None, out: str | None = None) -> ray.data.Dataset:
    """The input pairs as they are (the plan's `read` step keys them): photo folders are listed on
    the driver; lists and DIP shards are read by Ray Data in parallel (a Subjects200K parquet is
    100s of GB: the driver never holds it)."""
    if cfg.source == "photos":
        rows = uper.photo_pairs(cfg.photos_root, cfg.pairs_per_subject)
        return dataset_of(rows)
    if cfg.source in ("pairs", "diptych"):
        return read_list(cfg.pairs)
    fs, shards = resolve_shards(cfg.dip_dir)  # source: dip
    if not shards:
        raise ValueError(f"{cfg.dip_dir}: no committed DIP shards")
    return ray.data.read_webdataset(shards, filesystem=fs, decoder=None, include_paths=False)


def read_list(path: str | None) -> ray.data.Dataset:
    if not path:
        raise ValueError("source: pairs / diptych needs `pairs` (a .parquet, .jsonl or .csv list)")
    return read_rows(path)


# --- the DAG -------------------------------------------------------------------------------------

def plan(cfg: UPERConfig, workers: dict | None = None) -> Plan:
    """The stages in order; `workers` replaces a role's class (tests use doubles)."""
    steps = Plan("uper", cfg, SCHEMA, source=uper.INPUT_COLUMNS[cfg.source], workers=workers)
    cpu, model = steps.cpu, steps.model
    vlm = dict(max_new_tokens=cfg.vlm_max_new_tokens)
    base = parent_of(cfg.pairs) if cfg.pairs else None  # a list's relative paths: relative to its folder
    cpu("read", partial(uper.read_pair, source=cfg.source, base=base, fields=cfg.output_fields()))
    steps.resume()
    cpu("single_subject", uper.single_subject)
    cpu("load", partial(uper.load_pair, max_side=cfg.max_side, diptych_padding=cfg.diptych_padding,
                             max_bytes=cfg.max_input_bytes))
    model("remove_background", "background_removal", image="ref", prefix="ref_")
    cpu("foreground", partial(uper.foreground_gate, fg_min=cfg.fg_fraction_min, fg_max=cfg.fg_fraction_max))
    cpu("attributes_query", partial(uper.attributes_query, max_attributes=cfg.max_attributes))
    model("attributes", "vlm", images=["ref_clean"], prompt="attributes_prompt", output="attributes_raw", **vlm)
    cpu("rating_query", partial(uper.rating_query, max_attributes=cfg.max_attributes, qa=cfg.qa))
    model("rating", "vlm", images=["ref_clean", "target"], prompt="rating_prompt", output="rating_raw", **vlm)
    cpu("rating_gate", partial(uper.rating_gate, rating_min=cfg.rating_min, qa=cfg.qa))
    cpu("reward_views", partial(uper.subject_reward_views, size=cfg.r_sub_size, patch=cfg.patch_size,
                                stride=cfg.patch_stride, crops=cfg.random_crops, crop_size=cfg.random_crop_size,
                                seed=cfg.seed))
    model("subject_reward", "image_encoder", image="rsub_ref", image_b="rsub_target", cosine="rsub_cosines",
          embedding=None, fit="resize")
    cpu("reward_scores", partial(uper.subject_reward_scores, weights=cfg.r_sub_weights,
                                 copy_paste_similarity=cfg.copy_paste_similarity,
                                 copy_paste_penalty=cfg.copy_paste_penalty))
    fields = manifest_fields(cfg)
    cpu("finalize", partial(uper.finalize, fields=fields, keep_ref=cfg.keep_original_ref), writes=tuple(fields))
    cpu("encode", partial(encode_members, schema=SCHEMA))
    return steps


def plans(cfg: UPERConfig, workers: dict | None = None) -> list[Plan]:
    return [plan(cfg, workers)]


def manifest_fields(cfg: UPERConfig) -> dict:
    return {"source": cfg.source, "qa": "enabled" if cfg.qa else "disabled", "rating_threshold": cfg.rating_min,
            "model_background_removal": cfg.background_removal.model, "model_vlm": cfg.vlm.model,
            "model_image_encoder": cfg.image_encoder.model}


SUBJECTS = ("teapot", "backpack", "sneaker", "vase", "guitar", "dog", "cat", "robot")


def simulated_inputs(root, n: int, side: int = 1024, seed: int = 0) -> list[str]:
    """A Parquet of n Subjects200K rows: `image` = {"bytes", "path"} of a diptych, two side / 2
    halves each in a `diptych_padding` (8 px) white border, so side 1024 is Subjects200K's 1056 x 528;
    `description` = {"item", "description_0", "description_1"}."""
    rng, half, p = np.random.default_rng(seed), side // 2, UPERConfig().diptych_padding
    rows = []
    for i in range(n):
        canvas = np.full((half + 2 * p, 2 * (half + 2 * p), 3), 255, np.uint8)
        canvas[p:p + half, p:p + half] = photo(half, half, rng)
        canvas[p:p + half, 3 * p + half:3 * p + 2 * half] = photo(half, half, rng)
        item = SUBJECTS[i % len(SUBJECTS)]
        rows.append({"image": {"bytes": jpeg_bytes(canvas), "path": None},
                     "description": {"item": item, "description_0": f"a {item} on a white background",
                                     "description_1": f"a {item} on a wooden table in a sunlit kitchen, photo {i}"}})
    return [f"pairs={parquet_list(rows, Path(root) / 'uper' / 'pairs.parquet')}"]


SPEC = register(DatasetSpec(
    name="uper", description=__doc__.splitlines()[0], paper=Paper("UPER", "001"),
    config=UPERConfig, profiles=profiles_of(__file__, "uper"), plans=plans, source=source,
    outputs=(Output(
        schema=SCHEMA, title="UPER SFT pairs", sections="section 3.2.1 and appendix B.4", card=cards.uper,
        charts=("r_sub", "r_sub_patch", "rating", "attributes_present", "fg_fraction"),
        examples={"sft": Example(uper_example),
                  # ReFL's D_RL (seed 001, Alg. 1 line 13): the prompt and the background-cleaned reference
                  "refl": Example(partial(rl_example, member="ref_clean"), members=("ref_clean",))},
        synthetic=random_sample, report_context=None, review=None),),
    simulated=Simulated(inputs=simulated_inputs, n=600, time_scale=1.0)))


def main(argv=None, workers: dict | None = None) -> dict:
    return run(SPEC, argv, workers)


if __name__ == "__main__":
    main()
