"""Faults during a run (the SIGKILL-of-the-driver case is in test_commit_resume.py): a poison
sample that makes a model worker raise, and a model actor killed mid-run with ray.kill. The DIP
DAG with the scripted doubles of tests/dip_doubles.py; both in one run."""
import json
import tempfile
from pathlib import Path

import yaml

from dip_doubles import DOUBLES, ScriptedVLM

# a worker process sees the same path: the first VLM actor to get a batch creates it and kills itself
KILLED_ONCE = Path(tempfile.gettempdir()) / "subjectforge-test-killed-once"


class FaultyVLM(ScriptedVLM):
    """The scripted VLM that raises on a "poison" prompt, and whose first incarnation is killed
    by ray.kill (restart allowed) in the middle of its first batch."""

    def __call__(self, batch):
        import ray

        if not KILLED_ONCE.exists():
            KILLED_ONCE.write_text(str(ray.get_runtime_context().get_actor_id()))
            ray.kill(ray.get_runtime_context().current_actor, no_restart=False)
        return super().__call__(batch)

    def predict(self, inputs):
        if any("poison" in p for x in inputs for p in x["prompts"]):
            raise RuntimeError("the model crashed on this sample")
        return super().predict(inputs)


def test_poison_sample_and_killed_actor(ray_local, tmp_path):
    from pipelines import dip
    from schemas import load_manifest, load_rejects, validate

    KILLED_ONCE.unlink(missing_ok=True)
    subjects = ["teapot", "pos9", "neg6", "poison", "shaded", "teapot"]
    rows = [{"prompt": f"a photo of {s} number {i} on a table", "subjects": [s], "class_nouns": [s],
             "category": "object"} for i, s in enumerate(subjects)]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"model": "scripted", "dtype": "float32", "batch_size": 2, "num_cpus": 0.5}
    config = {"profile": "tiny", "source": "prompts", "prompts_file": str(tmp_path / "prompts.jsonl"),
              "image_size": 64, "inpainter": "opencv", "mask_dilation_px": 4, "encoder_cosine_min": 0.3, "qa": True,
              "ray": {"num_cpus": 8}, "write": {"target_shard_samples": 2},
              **{role: spec for role in ("text_to_image", "grounding", "segmentation", "vlm", "image_encoder")}}
    (tmp_path / "dip.yaml").write_text(yaml.safe_dump(config))
    out = str(tmp_path / "out")
    dip.main(["--config", str(tmp_path / "dip.yaml"), "--out", out], workers=dict(DOUBLES, vlm=FaultyVLM))

    assert KILLED_ONCE.exists()  # an actor was killed mid-run, and the run went on
    manifest, rejects = load_manifest(f"{out}/dip"), load_rejects(f"{out}/dip")
    assert validate(f"{out}/dip").ok
    assert len(manifest) == 5 and manifest["key"].is_unique  # every key once, through Ray's retries
    poison = rejects[rejects["input"].str.contains("poison")]
    assert list(poison["reason"]) == ["model_error"] and "crashed" in poison["detail"].iloc[0]
    assert len(rejects) == 1
    KILLED_ONCE.unlink()
