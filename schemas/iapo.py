"""IAPO instances (seed 003 supplementary, Fig. II, eq. 1): a preference pair with matched instance
boxes and a per-instance preference rho.

The list columns are aligned per kept instance (categories, boxes_0, boxes_1, rho, judge_answers,
judge_orders, judge_choices); `dropped` / `drop_reasons` are the planned instances that were not
kept and why. The json member adds the same per instance as records ("instances") and the drops
("dropped_instances")."""
import pyarrow as pa

from schemas.contract import DatasetSchema, Member

SCHEMA_VERSION = 1

f32, i32, s = pa.float32(), pa.int32(), pa.string()

SCHEMA = DatasetSchema(
    name="iapo",
    version=SCHEMA_VERSION,
    members=(
        Member("image_0", "jpg", "image"),
        Member("image_1", "jpg", "image"),
        # eq. 1 weight maps M* on the latent grid, one per image from its own boxes
        Member("weights_0", "npy", "array", required=False, dtype="float32", ndim=2, grid_of="image_0"),
        Member("weights_1", "npy", "array", required=False, dtype="float32", ndim=2, grid_of="image_1"),
        Member("json", "json", "json"),
    ),
    fields=(
        pa.field("caption", s),
        pa.field("source", s),  # pairs | photos | dip
        pa.field("input", s),  # the image paths, or the caption when the images came as bytes
        pa.field("label_0", f32),
        pa.field("label_1", f32),
        pa.field("winner", pa.int8()),  # the globally preferred image x^w: 0 or 1
        pa.field("planner_answer", s),
        pa.field("planner_fallback", pa.bool_()),  # qa off: unparsable planner answer, fallback_instance used
        pa.field("n_planned", i32),
        pa.field("n_instances", i32),
        pa.field("n_dropped", i32),
        pa.field("n_agree", i32),  # instances with rho 0
        pa.field("n_disagree", i32),  # instances with rho 1
        pa.field("n_unjudged", i32),  # qa off: unparsable judge answers, kept with rho 0
        pa.field("categories", pa.list_(s)),
        pa.field("boxes_0", pa.list_(pa.list_(f32))),  # xyxy pixels of image_0 as stored
        pa.field("boxes_1", pa.list_(pa.list_(f32))),
        pa.field("rho", pa.list_(pa.int8())),  # 0: instance agrees with the global label
        pa.field("judge_answers", pa.list_(s)),
        pa.field("judge_orders", pa.list_(s)),  # "01" = image_0 shown as Image A, "10" = swapped
        pa.field("judge_choices", pa.list_(s)),  # "A" / "B" as the judge saw them; null: unparsable (qa off)
        pa.field("dropped", pa.list_(s)),
        pa.field("drop_reasons", pa.list_(s)),
        pa.field("rho_mean", f32),
        pa.field("w_pos", f32),
        pa.field("w_neg", f32),
        pa.field("weight_grid", i32),  # pixels per weight-map cell
        pa.field("box_threshold", f32),
        pa.field("text_threshold", f32),
        pa.field("qa", s),  # enabled | disabled
        pa.field("seed", i32),
        pa.field("model_vlm", s),
        pa.field("model_grounding", s),
    ),
)
