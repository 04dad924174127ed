"""IAPO instances (seed 003 supplementary, Fig. II, eq. 1): a preference pair with matched instance
boxes and a per-instance preference rho."""
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
        Member("weights_0", "npy", "array", required=False, dtype="float32", ndim=2, grid_of="image_0"),
        Member("weights_1", "npy", "array", required=False, dtype="float32", ndim=2, grid_of="image_1"),
        Member("json", "json", "json"),
    ),
    fields=(
        pa.field("caption", s),
        pa.field("label_0", f32),
        pa.field("label_1", f32),
        pa.field("n_instances", i32),
        pa.field("n_dropped", i32),
        pa.field("categories", pa.list_(s)),
        pa.field("boxes_0", pa.list_(pa.list_(f32))),
        pa.field("boxes_1", pa.list_(pa.list_(f32))),
        pa.field("rho", pa.list_(pa.int8())),  # 0: instance agrees with the global label
        pa.field("judge_answers", pa.list_(s)),
        pa.field("order", pa.list_(s)),  # "01" = image_0 shown as A, "10" = swapped
        pa.field("rho_mean", f32),
        pa.field("w_pos", f32),
        pa.field("w_neg", f32),
        pa.field("model_vlm", s),
        pa.field("model_grounding", s),
    ),
)
