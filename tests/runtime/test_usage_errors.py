"""A user's mistakes are one line and exit code 2 before Ray starts; `validate` never calls a
folder that is not a dataset OK."""
from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT


def run(*args, timeout=120):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout)


@pytest.mark.parametrize("args, words", [
    (["--set", "source=photo"], "config source: Input should be 'generate', 'prompts' or 'photos', got 'photo'"),
    (["--set", "segmenter=sam"], "config segmenter: Input should be 'grounded_sam2' or 'salient'"),
    (["--set", "source=photos", "--set", "photos_root=/no/such/photos"], "input photos_root: /no/such/photos: no such"),
    (["--set", "source=prompts"], "input prompts_file: not set"),
    (["--set", "n_single"], "--set expects a.b=value"),
])
def test_config_mistakes_exit_2_with_one_line(args, words, tmp_path, capsys):
    """DIP's main, as `python pipelines/dip.py` runs it (the next test runs the script itself)."""
    from pipelines import dip

    with pytest.raises(SystemExit) as e:
        dip.main(["--config", str(ROOT / "configs/dip.tiny.yaml"), "--out", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert e.value.code == 2 and words in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "dip").exists()  # nothing started


def test_a_missing_config_file_is_one_line(tmp_path):
    out = run("pipelines/multiid.py", "--config", str(tmp_path / "none.yaml"), "--out", str(tmp_path))
    assert out.returncode == 2 and out.stderr.strip() == f"multiid.py: config {tmp_path / 'none.yaml'}: no such file"


def test_validate_fails_on_a_folder_that_is_not_a_dataset(tmp_path):
    missing = run("-m", "runtime.cli", "validate", "/no/such/dip")
    assert missing.returncode == 1 and "no_dataset" in missing.stdout and "does not exist" in missing.stdout
    (tmp_path / "dip").mkdir()
    empty = run("-m", "runtime.cli", "validate", str(tmp_path / "dip"))
    assert empty.returncode == 1 and "not_a_dataset" in empty.stdout
