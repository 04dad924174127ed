"""The slim trainer on the CPU: the tiny random-weight FLUX with LoRA on the shards of the tiny
pipeline runs (session fixtures in conftest), each objective on its dataset; the LoRA checkpoint
loads back through peft; bad samples are skipped."""
import io
import json
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch

from tests.conftest import tiny_config


def train_args(tmp_path, data: str, **overrides) -> list[str]:
    path = tiny_config("train", tmp_path, data=data, **overrides)
    return ["--config", str(path), "--out", str(tmp_path / "run")]


def metrics(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]


def test_focus_dpo_trains_20_steps_on_tiny_dip_shards(dip_tiny, tmp_path):
    from pipelines import train

    summary = train.main(train_args(tmp_path, f"{dip_tiny[1]}/dip"))
    log = metrics(tmp_path)
    assert [r["step"] for r in log] == list(range(1, 21))
    assert all(np.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in log)
    assert all(0 <= r["a_focus"] <= 1 for r in log) and any(r["mask_mean"] > 0 for r in log)
    assert log[0]["loss"] == pytest.approx(np.log(2), abs=1e-4)  # LoRA starts at zero: policy == reference
    assert summary["fixed_batch_loss_first"] == pytest.approx(np.log(2), abs=1e-4)
    assert summary["skipped"] == {}
    assert (tmp_path / "run" / "lora" / "adapter_config.json").is_file()
    assert (tmp_path / "run" / "lora" / "pytorch_lora_weights.safetensors").is_file()


@pytest.fixture(scope="module")
def overfit(dip_tiny, tmp_path_factory):
    from runtime.config import load_config
    from configs import TrainConfig
    from trainer.loop import fit

    tmp = tmp_path_factory.mktemp("overfit")
    cfg = load_config(TrainConfig, tiny_config("train", tmp, data=f"{dip_tiny[1]}/dip", overfit=True))
    model, summary = fit(cfg, str(tmp / "run"))
    return cfg, model, summary, tmp / "run"


def test_overfits_a_fixed_batch(overfit):
    _, _, summary, _ = overfit
    assert summary["fixed_batch_loss_last"] < summary["fixed_batch_loss_first"] - 0.1
    print(f"focus_dpo fixed batch: {summary['fixed_batch_loss_first']:.4f} -> {summary['fixed_batch_loss_last']:.4f}")


def test_lora_checkpoint_loads_back_through_peft_and_diffusers(overfit):
    """peft's PeftModel.from_pretrained on a fresh base transformer, and diffusers'
    FluxPipeline.load_lora_weights, give the trained model's outputs; with the adapter off, the
    base model's (the LoRA changed something)."""
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft import PeftModel

    cfg, model, _, run = overfit
    torch.manual_seed(0)
    size = cfg.resolution
    x = torch.randn(1, (size // 16) ** 2, 64)
    text = model.encode_text(["a teapot"])
    ref = torch.randn(1, (size // 16) ** 2, 64)
    with torch.no_grad():
        trained = model(x, torch.tensor([0.3]), text, size, size, reference=ref)
        with model.reference_model():
            base_out = model(x, torch.tensor([0.3]), text, size, size, reference=ref)
    base = FluxTransformer2DModel.from_pretrained(cfg.model, subfolder="transformer")
    loaded = PeftModel.from_pretrained(base, str(run / "lora")).eval()
    model.transformer = loaded  # the same conditioning wrapper around the reloaded weights
    with torch.no_grad():
        again = model(x, torch.tensor([0.3]), text, size, size, reference=ref)
    torch.testing.assert_close(again, trained, atol=1e-6, rtol=1e-5)
    assert (trained - base_out).abs().max() > 1e-4
    pipe = FluxPipeline.from_pretrained(cfg.model)
    pipe.load_lora_weights(str(run / "lora"))
    model.transformer = pipe.transformer
    with torch.no_grad():
        via_diffusers = model(x, torch.tensor([0.3]), text, size, size, reference=ref)
    torch.testing.assert_close(via_diffusers, trained, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("objective", ["iapo", "dpo"])
def test_preference_objectives_on_iapo_shards(iapo_tiny, tmp_path, objective):
    from pipelines import train

    summary = train.main(train_args(tmp_path, f"{iapo_tiny[1]}/iapo", objective=objective, steps=4, overfit=True))
    log = metrics(tmp_path)
    assert len(log) == 4 and all(np.isfinite(r["loss"]) for r in log)
    assert summary["fixed_batch_loss_last"] < summary["fixed_batch_loss_first"]


def test_sft_on_uper_shards(uper_tiny, tmp_path):
    from pipelines import train

    summary = train.main(train_args(tmp_path, f"{uper_tiny[1]}/uper", objective="sft", steps=4, overfit=True,
                                    manifest_query="fg_fraction > 0.05"))
    assert len(metrics(tmp_path)) == 4
    assert summary["fixed_batch_loss_last"] < summary["fixed_batch_loss_first"]


def test_sft_and_id_losses_on_multiid_paired_samples(multiid_world, tmp_path):
    """Seed 002 eq. 6 on the paired group photos: flow matching + GT-aligned ID loss + InfoNCE with
    bank negatives, through a TorchScript face encoder (the tiny one here). The tiny profile's data
    with scripted captions (the random VLM's captions of the four shared photos may leave no paired
    photo in train, depending on the keys, i.e. where the checkout is)."""
    from pipelines import train
    from trainer.face_encoder import build_tiny

    encoder = build_tiny(tmp_path / "face.pt")
    summary = train.main(train_args(tmp_path, f"{multiid_world[1]}/multiid", objective="id", steps=3, batch_size=1,
                                    manifest_query="paired", face_encoder=str(encoder)))
    log = metrics(tmp_path)
    assert len(log) == 3 and all(np.isfinite([r["sft"], r["id"], r["contrastive"]]).all() for r in log)
    assert all(r["loss"] == pytest.approx(r["sft"] + 0.1 * r["id"] + 0.1 * r["contrastive"], rel=1e-4) for r in log)
    assert summary["skipped"] == {}
    # MultiID-Bench is held out: the trainer read the train split only, and says so
    from schemas import load_manifest

    m = load_manifest(f"{multiid_world[1]}/multiid")
    assert set(m.split) == {"train", "bench"}
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written["split"] == "train" and written["manifest_rows"] == int(((m.split == "train") & m.paired).sum()) > 0


def test_a_bad_sample_is_skipped_with_its_reason(dip_tiny, tmp_path):
    """A copy of a DIP shard with one sample missing its loser and one whose mask has the wrong
    size: both are skipped and counted, the others train."""
    from PIL import Image

    from pipelines import train
    from schemas.reader import resolve_shards
    from trainer.data import examples

    src = resolve_shards(f"{dip_tiny[1]}/dip")[1][0]
    bad_dir = tmp_path / "dip"
    (bad_dir / "shards").mkdir(parents=True)
    with tarfile.open(src) as tin, tarfile.open(bad_dir / "shards" / "dip-000000.tar", "w") as tout:
        members = tin.getmembers()
        keys = sorted({m.name.split(".")[0] for m in members})
        for m in members:
            key, field = m.name.split(".", 1)
            data = tin.extractfile(m).read()
            if key == keys[0] and field == "lose.jpg":
                continue
            if key == keys[1] and field == "mask.png":
                buf = io.BytesIO()
                Image.new("L", (8, 8), 255).save(buf, format="PNG")
                data = buf.getvalue()
            info = tarfile.TarInfo(m.name)
            info.size = len(data)
            tout.addfile(info, io.BytesIO(data))
    # the manifest of the copied shard, so the reader finds its keys
    from schemas.reader import load_manifest

    (bad_dir / "manifest").mkdir()
    m = load_manifest(f"{dip_tiny[1]}/dip")
    m[m["key"].isin(keys)].assign(shard="dip-000000").to_parquet(bad_dir / "manifest" / "dip-000000.parquet")

    skipped = Counter()
    got = list(examples(str(bad_dir), 64, objective="focus_dpo", epochs=1, skipped=skipped))
    assert skipped == Counter({"missing_member": 1, "mask_size": 1})
    assert len(got) == len(keys) - 2
    # more steps than the shard has samples: the stream passes both bad ones and goes on
    summary = train.main(train_args(tmp_path, str(bad_dir), steps=len(keys)))
    assert set(summary["skipped"]) == {"missing_member", "mask_size"} and len(metrics(tmp_path)) == len(keys)


def test_objective_and_dataset_must_match(dip_tiny, tmp_path, capsys):
    from pipelines import train

    with pytest.raises(ValueError, match="sft trains on"):
        train.main(train_args(tmp_path, f"{dip_tiny[1]}/dip", objective="sft"))
    with pytest.raises(SystemExit) as e:  # a usage error: one line listing the choices, exit 2
        train.main(train_args(tmp_path, f"{dip_tiny[1]}/dip", objective="ppo"))
    assert e.value.code == 2 and "objective: Input should be 'sft', 'dpo'" in capsys.readouterr().err


@pytest.mark.parametrize("dataset", ["uper", "dip"])
def test_refl_on_prompts_and_references(dataset, uper_tiny, dip_tiny, tmp_path):
    """UPER's ReFL with train.tiny.yaml's reward models, the tiny CLIP (R_text), HPSv2 (R_aes,
    open_clip) and DINOv2 (R_sub), on a UPER or a DIP dataset's prompts and references: the policy
    samples, no target is read."""
    from pipelines import train

    out = {"uper": uper_tiny, "dip": dip_tiny}[dataset][1]
    summary = train.main(train_args(tmp_path, f"{out}/{dataset}", objective="refl", steps=3, refl_steps=6,
                                    refl_stop=[3, 5]))
    log = metrics(tmp_path)
    assert len(log) == 3 and all(r["grad_norm"] > 0 for r in log)
    for r in log:
        assert all(-1 <= r[f"reward_{k}"] <= 1 for k in ("text", "aesthetic", "subject"))
        assert 3 <= r["refl_stop"] <= 5 and 0 < r["refl_sigma"] < 1
    assert summary["skipped"] == {}


def test_gt_aligned_real_arcface_reproduces_the_pipelines_embeddings(multiid_tiny, tmp_path):
    """The ID loss's path on real weights: the group photo of a MultiID sample, warped to the
    ArcFace template with its ground-truth landmarks (trainer.face_align, differentiable) and
    embedded by ../shared/assets' recognition model converted to torch, gives the embeddings the
    pipeline stored (insightface's own norm_crop + onnxruntime)."""
    from schemas.reader import read_samples
    from trainer.face_align import arcface_align
    from trainer.face_encoder import from_onnx
    from tests.conftest import assets_or_skip

    onnx = assets_or_skip() / "models/insightface_pack/rec_faceplugin_fr_feature_512.onnx"
    encoder = torch.jit.load(str(from_onnx(onnx, tmp_path / "arcface.pt")))
    cosines = []
    for s in read_samples(f"{multiid_tiny[1]}/multiid", split_by_node=False, split_by_worker=False):
        image = torch.from_numpy(s["image"]).permute(2, 0, 1)[None].float() / 255
        kps = torch.tensor(s["json"]["keypoints"], dtype=torch.float32).view(-1, 5, 2)
        faces = arcface_align(image.expand(len(kps), -1, -1, -1), kps)
        emb = torch.cat([encoder(f[None] * 2 - 1) for f in faces]).detach()
        emb = torch.nn.functional.normalize(emb, dim=-1).numpy()
        cosines += list((emb * s["embeddings"]).sum(1))
    print(f"GT-aligned torch ArcFace vs the pipeline's embeddings over {len(cosines)} faces: min cosine {min(cosines):.4f}")
    assert len(cosines) >= 4 and min(cosines) > 0.98


@pytest.mark.slow
def test_ray_train_two_workers(dip_tiny, tmp_path):
    """`workers: 2`: the same loop on Ray Train's TorchTrainer (DDP over gloo on the CPU); rank 0
    writes the metrics, the summary and the LoRA."""
    from pipelines import train

    summary = train.main(train_args(tmp_path, f"{dip_tiny[1]}/dip", workers=2, steps=3))
    assert summary["steps"] == 3 and len(metrics(tmp_path)) == 3
    assert (tmp_path / "run" / "lora" / "adapter_model.safetensors").is_file()
