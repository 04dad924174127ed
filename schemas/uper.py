"""UPER SFT pairs (seed 001 section 3.2.1 / appendix B.4) with the subject-consistency reward R_sub
(section 3.1.3 / appendix B.1)."""
import pyarrow as pa

from schemas.contract import DatasetSchema, Member

SCHEMA_VERSION = 1

f32, i32, s = pa.float32(), pa.int32(), pa.string()

SCHEMA = DatasetSchema(
    name="uper",
    version=SCHEMA_VERSION,
    members=(
        Member("ref_clean", "jpg", "image"),  # subject composited on pure white
        Member("ref_alpha", "png", "alpha", size_of="ref_clean"),
        Member("ref", "jpg", "image", required=False),  # the original reference
        Member("target", "jpg", "image"),
        Member("json", "json", "json"),
    ),
    fields=(
        pa.field("prompt", s),
        pa.field("source", s),
        pa.field("subject", s),
        pa.field("fg_fraction", f32),
        pa.field("attributes", pa.list_(s)),
        pa.field("verdicts", pa.list_(s)),
        pa.field("rating", i32),  # 0 = definitely not the same object ... 5 = certainly the same
        pa.field("rating_threshold", i32),
        pa.field("r_sub", f32),
        pa.field("r_sub_patch", f32),
        pa.field("r_sub_cls", f32),
        pa.field("r_sub_crops", f32),
        pa.field("r_sub_penalty", f32),
        pa.field("model_background_removal", s),
        pa.field("model_vlm", s),
        pa.field("model_image_encoder", s),
    ),
)
