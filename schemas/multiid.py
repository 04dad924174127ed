"""MultiID (WithAnyone, seed 002 section 3 / appendix C): group photos with faces matched to the
ArcFace reference bank, and the bank's reference images (`multiid_refs`)."""
import pyarrow as pa

from schemas.contract import DatasetSchema, Member

SCHEMA_VERSION = 4  # 2: `identity`, the assignment at assign_threshold; 3: hashed ids, every face, reached, text; 4: caption_source

f32, i32, s = pa.float32(), pa.int32(), pa.string()

SCHEMA = DatasetSchema(
    name="multiid",
    version=SCHEMA_VERSION,
    members=(
        Member("image", "jpg", "image"),
        Member("embeddings", "npy", "array", dtype="float32", ndim=2),  # [n_faces, 512] normed
        Member("json", "json", "json"),
    ),
    fields=(
        pa.field("source", s),
        pa.field("width", i32),
        pa.field("height", i32),
        pa.field("n_faces", i32),
        pa.field("boxes", pa.list_(pa.list_(f32))),  # xyxy per face
        pa.field("keypoints", pa.list_(pa.list_(f32))),  # 5 points, x0 y0 ... x4 y4
        pa.field("det_scores", pa.list_(f32)),
        pa.field("identifiable", pa.list_(pa.bool_())),  # False: a face under min_face_px (counted, never assigned)
        pa.field("top1_identity", pa.list_(i32)),  # identity ids: hashes of the identity's name
        pa.field("similarity", pa.list_(f32)),  # cosine to the top-1 center (null: not identifiable)
        pa.field("margin", pa.list_(f32)),  # top-1 minus top-2 cosine
        pa.field("identity_at_040", pa.list_(i32)),  # -1 = unassigned (section 3: 0.4)
        pa.field("identity_at_050", pa.list_(i32)),  # appendix C: 0.5
        pa.field("assign_threshold", f32),  # which of the two `identity` is
        pa.field("identity", pa.list_(i32)),  # per face, at assign_threshold: what split, report, trainer read
        pa.field("conflict", pa.list_(pa.bool_())),  # lost its top-1 identity to a more similar face
        pa.field("reached", pa.list_(i32)),  # every identity some face reaches at the low threshold
        pa.field("n_assigned", i32),
        pa.field("paired", pa.bool_()),
        pa.field("min_side", i32),
        pa.field("aesthetic", f32),
        pa.field("collage", pa.bool_()),
        pa.field("text", pa.bool_()),  # OCR text over max_text_fraction (a reject)
        pa.field("text_fraction", f32),  # area of the detected text / image area
        pa.field("caption", s),
        pa.field("caption_prompt_index", i32),  # which of the six prompts of app. I.1
        pa.field("caption_repaired", pa.bool_()),  # cut to 77 words / "This image shows" prefixed
        pa.field("caption_source", pa.string()),  # vlm / template (the face count: captions: template)
        pa.field("split", s),  # train / bench
        pa.field("model_face_analysis", s),
        pa.field("model_vlm", s),
        pa.field("model_text_detection", s),
        pa.field("model_aesthetic", s),
    ),
)

REFS_SCHEMA = DatasetSchema(
    name="multiid_refs",
    tasks=("image-feature-extraction",),  # ArcFace references of each identity
    version=SCHEMA_VERSION,
    members=(
        Member("image", "jpg", "image"),
        Member("embedding", "npy", "array", dtype="float32", ndim=1),
        Member("json", "json", "json"),
    ),
    fields=(
        pa.field("identity_id", i32),
        pa.field("source", s),
        pa.field("box", pa.list_(f32)),
        pa.field("det_score", f32),
        pa.field("center_similarity", f32),
        pa.field("model_face_analysis", s),
    ),
)
