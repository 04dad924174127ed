"""DIP: FocusDPO preference quadruplets (prompt c, reference x_r, winner x_w, loser x_l) with the
subject mask M_prior and the complexity map M_d (seed 000, section 4.1 and appendix B).

    python pipelines/dip.py --config configs/dip.tiny.yaml --out ./out
    ray job submit --working-dir . -- python pipelines/dip.py --config configs/dip.gpu.yaml --out s3://bucket/dip
"""
from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ray

from schemas.batch import batch_of, run_rows
from schemas.dip import SCHEMA
from schemas.job import drop_committed, parse_args, start_ray, write
from schemas.pipeline_configs import DIPConfig
from stages import dip
from stages.catalog import make_prompts, read_prompts
from stages.encode import encode_members
from stages.keys import sample_key
from stages.photos import dreambench_pairs, load_image
from workers import tiny
from workers.background_removal import BackgroundRemoval
from workers.base import pool_args
from workers.grounding import Grounding
from workers.image_encoder import ImageEncoder
from workers.inpainting import Inpainting
from workers.segmentation import Segmentation
from workers.text_to_image import TextToImage
from workers.vlm import VLM

WORKERS = {"text_to_image": TextToImage, "inpainting": Inpainting, "grounding": Grounding,
           "segmentation": Segmentation, "vlm": VLM, "image_encoder": ImageEncoder,
           "background_removal": BackgroundRemoval}


def source_rows(cfg: DIPConfig) -> list[dict]:
    """Inputs with their content keys: generated prompts from the catalog, a prompts file, or pairs
    of photos of one subject."""
    if cfg.source == "photos":
        rows = [dict(p, subjects=[p["subject"]], class_nouns=[p["class_noun"]], n_subjects=1, seed=cfg.seed,
                     input=f"{p['ref_path']} | {p['win_path']}") for p in dreambench_pairs(cfg.photos_root)]
        inputs = lambda r: {"ref": _file_id(r["ref_path"]), "win": _file_id(r["win_path"]), "prompt": r["prompt"]}
    else:
        if cfg.source == "prompts":
            rows = read_prompts(cfg.prompts_file)
        else:
            rows = make_prompts(cfg.catalog, cfg.n_single, cfg.n_multi, cfg.seed)  # subjects, scenes, lighting
        rows = [dict(r, input=r.get("prompt")) for r in rows]
        inputs = lambda r: {k: r.get(k) for k in ("prompt", "ref_prompt", "target_prompt", "subjects", "seed")}
    return [dict(r, key=sample_key(inputs(r), cfg.output_fields())) for r in rows]


def _file_id(path: str | None) -> dict:
    """A photo's identity for its key: path and size (cheap on the driver; reading every file to
    hash it would be the driver's largest job)."""
    st = os.stat(path) if path and os.path.exists(path) else None
    return {"path": os.path.abspath(path) if path else None, "size": st.st_size if st else None}


def load_photos(row: dict, max_side: int) -> dict:
    row["ref"] = load_image(row["ref_path"], max_side)
    row["win"] = load_image(row["win_path"], max_side)
    return row


def cpu(ds: ray.data.Dataset, stage: str, fn, batch_size: int = 8) -> ray.data.Dataset:
    """A CPU stage: a task per batch, so GPU actors never wait on this work."""
    return ds.map_batches(partial(run_rows, stage, fn), batch_size=batch_size, batch_format="pyarrow")


def model(ds: ray.data.Dataset, cls, spec, stage: str, **kwargs) -> ray.data.Dataset:
    return ds.map_batches(cls, batch_format="pyarrow", **pool_args(cls, spec, stage=stage, **kwargs))


def build(cfg: DIPConfig, out: str, workers: dict | None = None) -> tuple[ray.data.Dataset, list[str]]:
    """The DAG; `workers` replaces a role's class (tests drive the gates with a scripted VLM)."""
    w = dict(WORKERS, **(workers or {}))
    rows = source_rows(cfg)
    ds, done = drop_committed(ray.data.from_arrow(batch_of(rows)) if rows else ray.data.from_items([]), out, SCHEMA.name)
    print(f"dip: {len(rows)} inputs, {done} keys already committed")
    stages: list[str] = []

    def step(name, fn=None, **kw):
        stages.append(name)
        return cpu(ds, name, fn) if fn else model(ds, stage=name, **kw)

    if cfg.source == "photos":
        ds = step("load", partial(load_photos, max_side=cfg.photo_max_side))
    elif cfg.generation_mode == "diptych":
        ds = step("generate", cls=w["text_to_image"], spec=cfg.text_to_image, mode="diptych",
                  height=cfg.image_size, width=cfg.image_size, steps=cfg.steps, guidance=cfg.guidance)
    else:
        for column, prompt in (("ref", "ref_prompt"), ("win", "target_prompt")):
            ds = step(f"generate_{column}", cls=w["text_to_image"], spec=cfg.text_to_image, mode="independent",
                      prompt_column=prompt, output_column=column, height=cfg.image_size, width=cfg.image_size,
                      steps=cfg.steps, guidance=cfg.guidance)
    ds = step("prefilter", cls=w["image_encoder"], spec=cfg.image_encoder, image="ref", image_b="win",
              cosine="encoder_cosine")
    ds = step("prefilter_gate", partial(dip.encoder_gate, cosine_min=cfg.encoder_cosine_min,
                                        copy_paste=cfg.copy_paste_cosine, qa=cfg.qa))
    ds = step("rubric_questions", dip.rubric_questions)
    ds = step("positive_check", cls=w["vlm"], spec=cfg.vlm, images=["ref", "win"], prompt="rubric_prompts",
              output="pos_raw", max_new_tokens=cfg.vlm_max_new_tokens)
    ds = step("positive_gate", partial(dip.positive_gate, min_score=cfg.rubric_positive_min, qa=cfg.qa))
    if cfg.segmenter == "salient":
        ds = step("segment", cls=w["background_removal"], spec=cfg.background_removal, image_column="win")
        ds = step("prior", partial(dip.prior_from_alpha, area_min=cfg.mask_area_min, area_max=cfg.mask_area_max))
    else:
        ds = step("ground", cls=w["grounding"], spec=cfg.grounding, image="win", phrases="class_nouns",
                  box_threshold=cfg.box_threshold, text_threshold=cfg.text_threshold)
        ds = step("boxes", dip.grounding_boxes)
        ds = step("segment", cls=w["segmentation"], spec=cfg.segmentation, image="win", boxes="boxes")
        ds = step("prior", partial(dip.prior_from_masks, area_min=cfg.mask_area_min, area_max=cfg.mask_area_max))
    ds = step("caption_queries", dip.caption_queries)
    ds = step("caption", cls=w["vlm"], spec=cfg.vlm, images=["crops"], prompt="caption_prompts",
              output="caption_raw", max_new_tokens=cfg.vlm_max_new_tokens)
    ds = step("captions", partial(dip.region_captions, qa=cfg.qa))
    if cfg.inpainter == "opencv":
        ds = step("inpaint", partial(dip.opencv_loser, dilation_px=cfg.mask_dilation_px))
    else:
        ds = step("inpaint", cls=w["inpainting"], spec=cfg.inpainting, image_column="win", mask_column="mask",
                  prompt_column="inpaint_prompt", dilation_px=cfg.mask_dilation_px, feather_px=cfg.mask_feather_px,
                  steps=cfg.inpaint_steps, guidance=cfg.inpaint_guidance)
    ds = step("negative_check", cls=w["vlm"], spec=cfg.vlm, images=["ref", "lose"], prompt="rubric_prompts",
              output="neg_raw", max_new_tokens=cfg.vlm_max_new_tokens)
    ds = step("negative_gate", partial(dip.negative_gate, max_score=cfg.rubric_negative_max, qa=cfg.qa))
    ds = step("complexity", partial(dip.complexity, patch=cfg.complexity_patch))
    ds = step("finalize", partial(dip.finalize, fields=manifest_fields(cfg)))
    ds = step("encode", partial(encode_members, schema=SCHEMA))
    return ds, stages


def manifest_fields(cfg: DIPConfig) -> dict:
    generated = cfg.source != "photos"
    return {
        "source": cfg.source, "segmenter": cfg.segmenter, "inpainter": cfg.inpainter,
        "qa": "enabled" if cfg.qa else "disabled",
        "generation_mode": cfg.generation_mode if generated else None,
        "model_text_to_image": cfg.text_to_image.model if generated else None,
        "model_inpainting": cfg.inpainting.model if cfg.inpainter == "flux_fill" else "opencv-telea",
        "model_grounding": cfg.grounding.model if cfg.segmenter == "grounded_sam2" else None,
        "model_segmentation": cfg.segmentation.model if cfg.segmenter == "grounded_sam2" else cfg.background_removal.model,
        "model_vlm": cfg.vlm.model, "model_image_encoder": cfg.image_encoder.model,
        "pos_threshold": cfg.rubric_positive_min, "neg_threshold": cfg.rubric_negative_max,
    }


def main(argv=None, workers: dict | None = None) -> dict:
    cfg, out = parse_args(__doc__.splitlines()[0], DIPConfig, argv)
    tiny.ensure_for(cfg)  # tiny profile: build the random-weight models the config points at
    start_ray(cfg)
    ds, stages = build(cfg, out, workers)
    return write(ds, out, SCHEMA, cfg, stages)


if __name__ == "__main__":
    main()
