"""DIP: FocusDPO preference quadruplets (prompt c, reference x_r, winner x_w, loser x_l) with the
subject mask M_prior and the complexity map M_d (seed 000, section 4.1 and appendix B).

    python pipelines/dip.py --config configs/dip.tiny.yaml --out ./out
    ray job submit --working-dir . -- python pipelines/dip.py --config configs/dip.gpu.yaml --out s3://bucket/dip
"""
from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import workers as model_roles  # noqa: F401  (every model role declared: the plan looks its roles up)
from configs.dip import DIPConfig
from report import cards
from report.review import borderline
from runtime.driver import run
from runtime.plan import Plan
from runtime.registry import DatasetSpec, Example, Output, Paper, Simulated, profiles_of, register
from runtime.inputs import read_rows
from runtime.rows import batch_of, dataset_of
from schemas.dip import SCHEMA
from stages import dip
from stages.catalog import PROMPT_FIELDS, fill_prompt, make_prompts
from stages.encode import encode_members
from stages.keys import file_id, sample_key
from stages.photos import dreambench_pairs
from stages.synthetic import random_sample
from trainer.data import dip_example, rl_example

PHOTO_COLUMNS = ("subject", "class_noun", "category", "ref_path", "win_path", "prompt", "subjects", "class_nouns",
                 "n_subjects", "seed")


def source_rows(cfg: DIPConfig) -> list[dict]:
    """Inputs with their content keys, made on the driver: prompts generated from the catalog, or
    pairs of photos of one subject (a curated folder per subject, on any filesystem)."""
    if cfg.source == "photos":
        rows = [dict(p, subjects=[p["subject"]], class_nouns=[p["class_noun"]], n_subjects=1, seed=cfg.seed,
                     input=f"{p['ref_path']} | {p['win_path']}") for p in dreambench_pairs(cfg.photos_root)]
        return [dict(r, key=photo_key(r, cfg.output_fields())) for r in rows]
    if cfg.source == "prompts":
        raise ValueError("a prompts file is read by Ray Data: source(cfg).take_all() lists its rows")
    rows = make_prompts(cfg.catalog, cfg.n_single, cfg.n_multi, cfg.seed)  # subjects, scenes, lighting
    return [dict(r, input=r.get("prompt"), key=prompt_key(r, cfg.output_fields())) for r in rows]


def photo_key(row: dict, fields: dict) -> str:
    return sample_key({"ref": file_id(row["ref_path"]), "win": file_id(row["win_path"]), "prompt": row["prompt"]},
                      fields)


def prompt_key(row: dict, fields: dict) -> str:
    return sample_key({k: row.get(k) for k in ("prompt", "ref_prompt", "diptych_prompt", "subjects", "seed")}, fields)


def source(cfg: DIPConfig, plan: Plan | None = None, out: str | None = None):
    """A prompts file is read by Ray Data (tasks fill and key its rows); the rest: source_rows."""
    if cfg.source == "prompts":
        return read_rows(cfg.prompts_file).map_batches(partial(keyed_prompts, fields=cfg.output_fields()),
                                                       batch_format="pyarrow")
    return dataset_of(source_rows(cfg))


def keyed_prompts(batch, fields: dict):
    rows = [fill_prompt(r) for r in batch.to_pylist()]
    return batch_of([{**{k: r[k] for k in PROMPT_FIELDS}, "input": r.get("prompt"), "key": prompt_key(r, fields)}
                     for r in rows])


def plan(cfg: DIPConfig, workers: dict | None = None) -> Plan:
    """The stages in order; `workers` replaces a role's class (tests drive the gates with doubles).
    The driver runs them as Ray Data stages, benchmarks/pipelines.py as a bare loop."""
    steps = Plan("dip", cfg, SCHEMA, source=PHOTO_COLUMNS if cfg.source == "photos" else PROMPT_FIELDS,
                 workers=workers)
    cpu, model = steps.cpu, steps.model

    gen = dict(height=cfg.image_size, width=cfg.image_size, steps=cfg.steps, guidance=cfg.guidance)
    steps.resume()
    cpu("check_subjects", dip.check_subjects)
    if cfg.source == "photos":
        cpu("load", partial(dip.load_photos, max_side=cfg.photo_max_side, max_bytes=cfg.max_input_bytes))
    elif cfg.generation_mode == "diptych":
        model("generate", "text_to_image", mode="diptych", prompt="diptych_prompt", left="ref", right="win", **gen)
    else:
        for column, prompt in (("ref", "ref_prompt"), ("win", "prompt")):
            model(f"generate_{column}", "text_to_image", mode="independent", prompt=prompt, output=column, **gen)
    model("prefilter", "image_encoder", image="ref", image_b="win", cosine="encoder_cosine", embedding=None)
    cpu("prefilter_gate", partial(dip.encoder_gate, cosine_min=cfg.encoder_cosine_min,
                                  copy_paste=cfg.copy_paste_cosine, qa=cfg.qa))
    cpu("rubric_questions", dip.rubric_questions)
    model("positive_check", "vlm", images=["ref", "win"], prompt="rubric_prompts", output="pos_raw",
          max_new_tokens=cfg.vlm_max_new_tokens)
    cpu("positive_gate", partial(dip.positive_gate, min_score=cfg.rubric_positive_min, qa=cfg.qa))
    areas = dict(area_min=cfg.mask_area_min, area_max=cfg.mask_area_max)
    if cfg.segmenter == "salient":
        model("segment", "background_removal", image="win")
        cpu("prior", partial(dip.prior_from_alpha, **areas))
    else:
        model("ground", "grounding", image="win", phrases="class_nouns", box_threshold=cfg.box_threshold,
              text_threshold=cfg.text_threshold)
        cpu("boxes", dip.grounding_boxes)
        model("segment", "segmentation", image="win", boxes="boxes")
        cpu("prior", partial(dip.prior_from_masks, **areas))
    if cfg.captions == "template":
        cpu("captions", dip.template_captions)
    else:
        cpu("caption_queries", dip.caption_queries)
        model("caption", "vlm", images=["crops"], prompt="caption_prompts", output="caption_raw",
              max_new_tokens=cfg.vlm_max_new_tokens)
        cpu("captions", partial(dip.region_captions, qa=cfg.qa))
    if cfg.inpainter == "opencv":
        cpu("inpaint", partial(dip.opencv_loser, dilation_px=cfg.mask_dilation_px))
    else:
        model("inpaint", "inpainting", image="win", mask="mask", prompt="inpaint_prompt", output="lose",
              mask_output="inpaint_mask", dilation_px=cfg.mask_dilation_px, feather_px=cfg.mask_feather_px,
              steps=cfg.inpaint_steps, guidance=cfg.inpaint_guidance)
    model("negative_check", "vlm", images=["ref", "lose"], prompt="rubric_prompts", output="neg_raw",
          max_new_tokens=cfg.vlm_max_new_tokens)
    cpu("negative_gate", partial(dip.negative_gate, max_score=cfg.rubric_negative_max, qa=cfg.qa))
    cpu("complexity", partial(dip.complexity, patch=cfg.complexity_patch))
    fields = manifest_fields(cfg)
    cpu("finalize", partial(dip.finalize, fields=fields), writes=tuple(fields))
    cpu("encode", partial(encode_members, schema=SCHEMA))
    return steps


def plans(cfg: DIPConfig, workers: dict | None = None) -> list[Plan]:
    return [plan(cfg, workers)]


def manifest_fields(cfg: DIPConfig) -> dict:
    generated = cfg.source != "photos"
    return {
        "source": cfg.source, "segmenter": cfg.segmenter, "inpainter": cfg.inpainter,
        "qa": "enabled" if cfg.qa else "disabled", "caption_source": cfg.captions,
        "generation_mode": cfg.generation_mode if generated else None,
        "model_text_to_image": cfg.text_to_image.model if generated else None,
        "model_inpainting": cfg.inpainting.model if cfg.inpainter == "flux_fill" else "opencv-telea",
        "model_grounding": cfg.grounding.model if cfg.segmenter == "grounded_sam2" else None,
        "model_segmentation": cfg.segmentation.model if cfg.segmenter == "grounded_sam2" else cfg.background_removal.model,
        "model_vlm": cfg.vlm.model, "model_image_encoder": cfg.image_encoder.model,
        "pos_threshold": cfg.rubric_positive_min, "neg_threshold": cfg.rubric_negative_max,
    }


def simulated_inputs(root, n: int, side: int = 1024, seed: int = 0) -> list[str]:
    """The catalog generator needs no files: n_single = ceil(n / 2), n_multi = floor(n / 2) prompts,
    image_size = side (the FLUX diptych is 2 side x side)."""
    return [f"n_single={n - n // 2}", f"n_multi={n // 2}", f"image_size={side}", f"seed={seed}"]


SPEC = register(DatasetSpec(
    name="dip", description=__doc__.splitlines()[0], paper=Paper("FocusDPO", "000"),
    config=DIPConfig, profiles=profiles_of(__file__, "dip"), plans=plans, source=source,
    outputs=(Output(
        schema=SCHEMA, title="DIP preference quadruplets (FocusDPO)", sections="section 4.1 and appendix B",
        card=cards.dip, charts=("encoder_cosine", "mask_area", "pos_scores", "neg_scores", "n_subjects"),
        examples={"dpo": Example(dip_example), "focus_dpo": Example(dip_example),
                  # ReFL's D_RL (seed 001, Alg. 1 line 13): the prompt and x_r, the policy makes the image
                  "refl": Example(partial(rl_example, member="ref"), members=("ref",))},
        synthetic=random_sample, report_context=None, review=borderline),),
    simulated=Simulated(inputs=simulated_inputs, n=160, time_scale=0.2)))


def main(argv=None, workers: dict | None = None) -> dict:
    return run(SPEC, argv, workers)


if __name__ == "__main__":
    main()
