"""Faults during a run: the driver SIGKILLed mid-run and the run started again (DIP's main in a
process of its own, as a user runs it, joined to this session's Ray, with the scripted doubles of
tests/dip_doubles.py for models: tests/e2e/dip_scripted.py; test_commit_resume.py has the same on
the synthetic pipeline, with a kill between a tar and its manifest); a poison sample that makes a
model worker raise, and a model actor killed mid-run with ray.kill (the DIP DAG with the doubles;
both in one run)."""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from tests.dip_doubles import DOUBLES, ScriptedVLM, scripted_config
from tests.conftest import ROOT
from tests.helpers import kill_group, wait_for

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
    assert len(rejects) == 1 and poison["retryable"].all()  # the model's RuntimeError: the machine's fault
    # the next run tries the retryable key again (the model is fine now); the old reject is superseded
    dip.main(["--config", str(tmp_path / "dip.yaml"), "--out", out], workers=DOUBLES)
    manifest, rejects = load_manifest(f"{out}/dip"), load_rejects(f"{out}/dip")
    assert len(manifest) == 6 and manifest["key"].is_unique and len(rejects) == 0
    assert validate(f"{out}/dip").ok
    KILLED_ONCE.unlink()


class BrokenVLM(ScriptedVLM):
    """A VLM whose CUDA context is gone: every call fails."""

    def predict(self, inputs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")


def test_a_stage_failing_on_every_row_stops_the_run_with_a_summary(ray_local, tmp_path, capsys):
    from pipelines import dip

    rows = [{"prompt": f"a photo of teapot number {i} on a table", "subjects": ["teapot"], "class_nouns": ["teapot"],
             "category": "object"} for i in range(24)]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"model": "scripted", "dtype": "float32", "batch_size": 4, "num_cpus": 0.5, "retries": 0}
    config = {"profile": "tiny", "source": "prompts", "prompts_file": str(tmp_path / "prompts.jsonl"),
              "image_size": 64, "inpainter": "opencv", "mask_dilation_px": 4, "encoder_cosine_min": 0.3,
              "ray": {"num_cpus": 8}, **{role: spec for role in ("text_to_image", "grounding", "segmentation", "vlm",
                                                                 "image_encoder")}}
    (tmp_path / "dip.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(SystemExit) as e:
        dip.main(["--config", str(tmp_path / "dip.yaml"), "--out", str(tmp_path / "out")],
                 workers=dict(DOUBLES, vlm=BrokenVLM))
    err = capsys.readouterr().err
    assert e.value.code == 1 and "run stopped: dip: stage positive_check:" in err
    assert "rows failed" in err and "model_error" in err and "e.g. input 'a photo of teapot number" in err


@pytest.mark.slow
def test_sigkill_driver_mid_run_then_rerun(ray_local, tmp_path, session_env):
    """DIP's driver (a process of its own, a job on this session's Ray) killed with SIGKILL as soon
    as its first shard is committed, then run again to the end: every input exactly once, as a
    sample or a reject, every shard validates, and the committed samples are not made again."""
    from pipelines import dip
    from schemas import load_manifest, load_rejects, validate

    config, rows = scripted_config(tmp_path, copies=3)
    (tmp_path / "dip.yaml").write_text(yaml.safe_dump(config))
    n = len(rows)
    out = tmp_path / "out"
    argv = ["--config", str(tmp_path / "dip.yaml"), "--out", str(out)]
    # DIP's main with the doubles, the VLM paced like a model: the run outlasts the first commit
    proc = subprocess.Popen([sys.executable, "tests/e2e/dip_scripted.py", *argv], cwd=ROOT, env=session_env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: any((out / "dip" / "manifest").glob("dip-*.parquet")) or proc.poll() is not None,
                 600, "a committed shard")
        assert proc.poll() is None, "the run ended before it could be killed"
    finally:
        kill_group(proc)
    partial, partial_rejects = load_manifest(str(out / "dip")), load_rejects(str(out / "dip"))
    print(f"killed with {len(partial)} samples and {len(partial_rejects)} rejects of {n} inputs committed")
    assert 0 < len(partial) and len(partial) + len(partial_rejects) < n  # killed mid-run: work was left
    assert validate(str(out / "dip")).ok  # what the kill left is consistent, before any rerun

    info = dip.main(argv, workers=DOUBLES)
    stages = {s["stage"]: s for s in info["runs"][-1]["stages"]}
    assert stages["check_subjects"]["rows_in"] == n - len(partial) - len(partial_rejects)  # committed: not made again
    df, rejects = load_manifest(str(out / "dip")), load_rejects(str(out / "dip"))
    assert df.key.is_unique and rejects.key.is_unique and not set(df.key) & set(rejects.key)
    assert set(partial.key) <= set(df.key) and set(partial_rejects.key) <= set(rejects.key)
    assert len(df) + len(rejects) == n
    report = validate(str(out / "dip"))
    assert report.ok and report.samples == len(df) and not report.uncommitted
