"""benchmarks/run.py end to end at its tiniest settings (every row there, finite positive ratios,
--json the same rows as the table), and the production-size builders of the --gpu path checked on
the meta device against the published parameter counts. No time is asserted."""
import json
import math
import subprocess
import sys

import pytest

from tests.conftest import ROOT
from builders import grounding, image_encoder, inpainting, segmentation, text_to_image, vlm

ROLES = ["text_to_image", "inpainting", "grounding", "segmentation", "vlm", "image_encoder", "face_analysis",
         "background_removal", "text_detection", "aesthetic"]


@pytest.mark.slow
def test_run_prints_one_table_of_every_ratio(tmp_path):
    out = tmp_path / "rows.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--json", str(out), "--log", str(tmp_path / "log"),
           "--workers-args", "--batches 2 --batch-size 1",
           "--shard-io-args", "--samples 24 --size 64 --unique 4 --repeats 1",
           "--memory-args", "--small 50 --large 500",
           "--multiid-args", "--faces 2000 --centers 50 --chunk 512 --identities 6 --per-identity 20 --block 2 "
                             "--pooled-identities 2 --repeats 1 --matmul-repeats 1"]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:] + (tmp_path / "log").read_text()[-5000:]

    rows = json.loads(out.read_text())
    expected = ([(f"worker {role} (cpu): pool / bare loop", "samples/s") for role in ROLES]
                + [("shard write: ShardDatasink / tarfile", "MB/s"), ("shard read: read_samples / tarfile", "MB/s"),
                   ("shard read decoded: read_samples / tarfile+PIL", "samples/s")]
                + [(f"peak RSS {n}: 500 / 50 samples", "MB") for n in ("write, driver", "write, process tree", "read")]
                + [("multiid retrieval: similarities+top1 / matmul", "GFLOP/s"),
                   ("multiid bank: build_bank / bare DBSCAN loop", "embeddings/s")])
    assert [(r["benchmark"], r["unit"]) for r in rows] == expected
    for r in rows:
        assert math.isfinite(r["ratio"]) and r["ratio"] > 0, r
        assert r["baseline"] > 0 and r["measured"] > 0
        assert r["ratio"] == pytest.approx(r["measured"] / r["baseline"])

    # the printed table: a header, then exactly the JSON rows in order, each ending in its ratio
    lines = run.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.split()[:1] == ["benchmark"])
    table = lines[start + 1:start + 1 + len(rows)]
    for line, r in zip(table, rows):
        assert line.startswith(r["benchmark"])
        cells = line[len(r["benchmark"]):].split()
        assert cells == [f"{r['baseline']:.4g}", f"{r['measured']:.4g}", r["unit"], f"{r['ratio']:.2f}"]
    assert lines[start + 1 + len(rows)] == ""  # nothing else in the table


@pytest.mark.slow
def test_inputs_benchmark_streams_every_input_and_prints_its_ratios(tmp_path):
    """benchmarks/inputs.py at its tiniest: every input of both sizes through MultiID's source and
    load step to the model pool, the resume with committed keys, the three lines it promises."""
    out = tmp_path / "inputs.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "inputs.py"), "--small", "100", "--large", "1000",
           "--kinds", "shards", "--json", str(out)]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    shards = report["kinds"]["shards"]
    assert (shards["small"]["rows"], shards["large"]["rows"]) == (100, 1000)  # every input, once
    assert report["resume"]["resumed"]["rows"] > 0 and report["resume"]["fresh"]["rows"] > 0
    lines = [line for line in run.stdout.splitlines() if " ratio " in line]
    assert [line.split(":")[0] for line in lines] == ["inputs driver peak RSS 1k / 100 (shards)",
                                                      "inputs time to first model batch 1k / 100 (shards)",
                                                      "resume 1k keys"]
    assert f"ratio {shards['rss_ratio']:.2f}" in lines[0] and f"ratio {report['resume']['ratio']:.2f}" in lines[2]


def test_run_rejects_unknown_names(capsys):
    from benchmarks import run

    for argv in (["--only", "workers,nosuch"], ["--pipelines", "dip,nosuch"]):
        with pytest.raises(SystemExit) as e:
            run.main(argv)
        assert e.value.code == 2
    assert "nosuch" in capsys.readouterr().err


def test_gpu_settings_come_from_the_gpu_configs():
    from benchmarks import workers

    specs = workers.gpu_specs()
    assert set(specs) == set(ROLES)
    assert (specs["text_to_image"].batch_size, specs["text_to_image"].dtype) == (4, "bfloat16")  # dip.gpu.yaml
    assert (specs["grounding"].batch_size, specs["grounding"].dtype) == (16, "float32")
    assert specs["image_encoder"].batch_size == 64  # DIP's prefilter, not UPER's rows of views
    assert specs["face_analysis"].batch_size == 32  # multiid.gpu.yaml
    assert specs["background_removal"].batch_size == 8  # uper.gpu.yaml (dip.gpu.yaml does not set it)
    assert (specs["aesthetic"].batch_size, specs["aesthetic"].dtype, specs["text_detection"].batch_size) == (
        64, "float16", 16)  # multiid.gpu.yaml
    table = workers.production_roles({role: ROOT / "out" / "full-models" / role for role in ROLES})
    assert set(table) == set(ROLES)
    assert table["text_to_image"][1]["steps"] == 28 and table["inpainting"][1]["steps"] == 50


def count(module) -> int:
    return sum(p.numel() for p in module.parameters())  # tied weights once, as the published counts


def flux_part(name: str) -> int:
    return count(text_to_image.full_flux_parts()[name])


def qwen() -> int:
    from transformers import Qwen2_5_VLForConditionalGeneration

    return count(Qwen2_5_VLForConditionalGeneration(vlm.full_config(vlm.local_processor()[1])))


def grounding_dino() -> int:
    from transformers import GroundingDinoForObjectDetection

    return count(GroundingDinoForObjectDetection(grounding.full_config()))


# What each build_full builds, against the size its model card / checkpoint publishes. 1% apart:
# the next size down or up of each family is 25% or more away (grounding-dino-tiny 172M,
# Qwen2.5-VL-3B 3.75B, dinov2-small 22M, clip-vit-base 151M, T5 v1.1 XL 1.2B).
PUBLISHED = {
    "FLUX.1 [dev] transformer": (lambda: count(text_to_image.full_flux_transformer()), 11.90e9),
    "FLUX.1 Fill [dev] transformer": (
        lambda: count(inpainting.full_flux_transformer(inpainting.FILL_IN_CHANNELS, 64)), 11.90e9),
    "FLUX.1 text_encoder (CLIP ViT-L/14 text)": (lambda: flux_part("text_encoder"), 123.1e6),
    "FLUX.1 text_encoder_2 (T5 v1.1 XXL encoder)": (lambda: flux_part("text_encoder_2"), 4.762e9),
    "FLUX.1 vae": (lambda: flux_part("vae"), 83.8e6),
    "IDEA-Research/grounding-dino-base": (grounding_dino, 233e6),
    "Qwen/Qwen2.5-VL-7B-Instruct": (qwen, 8.29e9),
    "facebook/dinov2-base": (lambda: count(image_encoder.full_model("dinov2")), 86.6e6),
    "openai/clip-vit-large-patch14": (lambda: count(image_encoder.full_model("clip")), 428e6),
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_production_builders_have_the_published_size(name):
    """Built on the meta device: the architecture without allocating its weights."""
    import torch

    build, published = PUBLISHED[name]
    with torch.device("meta"):
        assert build() == pytest.approx(published, rel=0.01)


def test_production_sam2_has_the_published_size():
    """SAM 2.1 hiera-l: 224.4M (the sam2 README). Hiera calls .item() while it is built, which
    the meta device cannot answer, so only the parameters go to meta here."""
    from accelerate import init_empty_weights

    with init_empty_weights():
        assert count(segmentation.full_model()) == pytest.approx(224.4e6, rel=0.01)


def test_every_production_role_has_a_builder():
    import importlib

    import workers  # noqa: F401
    from runtime import roles

    full = roles.buildable("full")
    assert {"text_to_image", "inpainting", "grounding", "segmentation", "vlm", "image_encoder", "aesthetic"} <= set(full)
    for role in full:
        assert callable(getattr(importlib.import_module(roles.get_role(role).builder.module), "build_full")), role
    with pytest.raises(ValueError, match="role 'face_analysis' has no full builder"):
        roles.build("face_analysis", "/nonexistent", size="full")


def test_a_tiny_model_never_passes_for_a_full_one(tmp_path, monkeypatch):
    import workers  # noqa: F401
    from runtime import roles

    (tmp_path / "grounding").mkdir()
    (tmp_path / "grounding" / roles.DONE).write_text(roles.marker("grounding", "tiny"))
    built = []
    monkeypatch.setattr(roles, "build", lambda role, d, seed, size: built.append((role, size)) or d)
    roles.ensure(tmp_path, ["grounding"])
    assert built == []
    roles.ensure(tmp_path, ["grounding"], size="full")
    assert built == [("grounding", "full")]
