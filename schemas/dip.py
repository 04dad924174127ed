"""DIP (FocusDPO, seed 000 section 4.1 / appendix B): prompt c, reference x_r, winner x_w, loser x_l,
subject mask M_prior (union and per subject) and complexity map M_d (eq. 7-8)."""
import pyarrow as pa

from schemas.contract import DatasetSchema, Member

SCHEMA_VERSION = 2  # 2: caption_source

f32, i32, s = pa.float32(), pa.int32(), pa.string()

SCHEMA = DatasetSchema(
    name="dip",
    tasks=("text-to-image", "image-to-image"),  # subject-driven: a reference image in, a new image out
    version=SCHEMA_VERSION,
    members=(
        Member("ref", "jpg", "image"),
        Member("win", "jpg", "image"),
        Member("lose", "jpg", "image"),
        Member("mask", "png", "mask", size_of="win"),  # M_prior, union over subjects
        Member("mask_*", "png", "mask", required=False, size_of="win"),  # M_prior per subject
        # where x_l may differ from x_w: the dilated M_prior the inpainter filled (outside it x_l == x_w)
        Member("inpaint_mask", "png", "mask", size_of="win"),
        Member("complexity", "npy", "array", dtype="float16", ndim=2, grid_of="win"),  # M_d
        Member("json", "json", "json"),
    ),
    fields=(
        pa.field("prompt", s),  # c: the subject prompt, describing x_w
        pa.field("ref_prompt", s),  # x_r's prompt (generated sources)
        pa.field("diptych_prompt", s),  # the one FLUX prompt of x_r | x_w (diptych mode)
        pa.field("category", s),  # object / animal / human-real / human-anime
        pa.field("n_subjects", i32),
        pa.field("subjects", pa.list_(s)),
        pa.field("class_nouns", pa.list_(s)),
        pa.field("seed", pa.int64()),
        pa.field("generation_mode", s),  # diptych / independent (generated sources)
        pa.field("model_text_to_image", s),
        pa.field("model_inpainting", s),
        pa.field("model_grounding", s),
        pa.field("model_segmentation", s),
        pa.field("model_vlm", s),
        pa.field("model_image_encoder", s),
        pa.field("encoder_cosine", f32),  # cosine(x_r, x_w) of the pre-filter
        pa.field("pos_scores", pa.list_(i32)),  # rubric score per subject, (x_r, x_w)
        pa.field("pos_answers", pa.list_(pa.list_(s))),
        pa.field("neg_scores", pa.list_(i32)),  # rubric score per subject, (x_r, x_l)
        pa.field("neg_answers", pa.list_(pa.list_(s))),
        pa.field("pos_threshold", i32),
        pa.field("neg_threshold", i32),
        pa.field("boxes", pa.list_(pa.list_(f32))),  # xyxy pixels in x_w, one per subject
        pa.field("mask_area", f32),  # fraction of x_w covered by M_prior
        pa.field("mask_areas", pa.list_(f32)),
        pa.field("captions", pa.list_(s)),  # region caption per subject
        pa.field("caption_source", s),  # vlm / template (the subject phrases: captions: template)
        pa.field("source", s),  # generate / prompts / photos
        pa.field("segmenter", s),
        pa.field("inpainter", s),
        pa.field("qa", s),  # enabled / disabled: whether the rubric and encoder gates were applied
    ),
)
