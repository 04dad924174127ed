"""The dataset card (README.md of each dataset folder): Hugging Face's format, its features load the
shards with `datasets`, its counts follow every run."""
import glob

import datasets
import numpy as np

from schemas import load_manifest
from schemas.dip import SCHEMA
from tests.helpers import synthetic_rows, write_rows


def card_of(out):
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(f"{out}/README.md")
    return card, DatasetInfosDict.from_dataset_card_data(card.data)["default"]


def test_the_card_loads_the_shards_with_hugging_face_datasets(ray_local, tmp_path):
    rows = synthetic_rows("dip", 10)
    rows[3] = dict(rows[3], reject_stage="segment", reject_reason="no_mask", reject_detail="empty")
    out = str(tmp_path / "dip")
    write_rows(rows, out, "dip", target_samples=4, config={"profile": "tiny", "seed": 0, "license": "cc-by-4.0",
                                                            "text_to_image": {"model": "black-forest-labs/FLUX.1-dev"}})
    card, info = card_of(out)
    assert card.data.license == "cc-by-4.0"
    assert card.data.task_categories == ["text-to-image", "image-to-image"]
    assert card.data.configs[0]["data_files"] == [{"split": "train", "path": "shards/*.tar"}]
    assert info.splits["train"].num_examples == 9
    # every member a sample had has its feature; a family's names as the writer saw them
    with_masks = [r for r in rows if "reject_reason" not in r]
    family = SCHEMA.member_for("mask_0")
    names = {f"{n}.png" for r in with_masks for n in r if family.matches(n)}
    assert names and names <= set(info.features)
    assert isinstance(info.features["win.jpg"], datasets.Image)
    assert info.features["json.json"]["prompt"] == datasets.Value("string")

    ds = datasets.load_dataset("webdataset", data_files=sorted(glob.glob(f"{out}/shards/*.tar")),
                               features=info.features, split="train", cache_dir=str(tmp_path / "hf"))
    manifest = load_manifest(out).set_index("key")
    assert len(ds) == info.splits["train"].num_examples == len(manifest)
    assert sorted(ds["__key__"]) == sorted(manifest.index)
    first = ds[0]
    assert first["win.jpg"].size == (64, 64)
    assert first["json.json"]["prompt"] == manifest.loc[first["__key__"], "prompt"]
    assert np.asarray(first["complexity.npy"]).ndim == 2
    # the body: counts, the seed paper, the models, rejects by reason
    assert "- samples: 9" in card.text and "FocusDPO" in card.text
    assert "| segment | no_mask | 1 |" in card.text
    assert "`black-forest-labs/FLUX.1-dev`" in card.text


def test_the_card_follows_every_run(ray_local, tmp_path):
    out = str(tmp_path / "uper")
    write_rows(synthetic_rows("uper", 3), out, "uper")
    assert card_of(out)[1].splits["train"].num_examples == 3
    write_rows(synthetic_rows("uper", 5, seed=1), out, "uper")  # a second run adds 5
    card, info = card_of(out)
    assert info.splits["train"].num_examples == 8 and "- samples: 8" in card.text and "- runs: 2" in card.text
    assert card.data.license == "other"  # the default: the models' licenses decide
