"""UPER SFT pairs (seed 001 section 3.2.1 / appendix B.4) with the subject-consistency reward R_sub
(section 3.1.3 / appendix B.1).

ref_clean is a PNG, not a JPEG: the point of the refinement is a background of exactly (255, 255,
255). At quality 95, JPEG leaves 0.2-1.5% of the background pixels off white by up to 8 levels,
around the subject's edge, a halo a model conditioned on ref_clean would learn. The cost: PNG is
2-4x the JPEG's bytes (DreamBench at 512 px: 20-190 KB against 9-48 KB)."""
import pyarrow as pa

from schemas.contract import DatasetSchema, Member

SCHEMA_VERSION = 1

f32, i32, s = pa.float32(), pa.int32(), pa.string()

SCHEMA = DatasetSchema(
    name="uper",
    tasks=("text-to-image", "image-to-image"),
    version=SCHEMA_VERSION,
    members=(
        Member("ref_clean", "png", "image"),  # subject composited on pure white
        Member("ref_alpha", "png", "alpha", size_of="ref_clean"),
        Member("ref", "jpg", "image", required=False),  # the original reference
        Member("target", "jpg", "image"),
        Member("json", "json", "json"),
    ),
    fields=(
        pa.field("prompt", s),  # the target's text condition
        pa.field("source", s),  # photos | pairs | diptych | dip
        pa.field("input", s),  # what the pair was made from: paths, or the upstream key
        pa.field("subject", s),
        pa.field("fg_fraction", f32),  # share of reference pixels with alpha > 127
        pa.field("attributes", pa.list_(s)),  # turn (a): key visual attributes of ref_clean
        pa.field("verdicts", pa.list_(s)),  # turn (b): "<attribute>: yes|no", in answer order
        pa.field("attributes_present", f32),  # share of verdicts that are yes
        pa.field("rating", i32),  # 0 = definitely not the same object ... 5 = certainly the same
        pa.field("rating_threshold", i32),
        pa.field("attributes_answer", s),  # the VLM's raw answers
        pa.field("rating_answer", s),
        pa.field("qa", s),  # enabled | disabled (gates recorded, not applied)
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
