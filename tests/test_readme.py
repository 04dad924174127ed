"""The README's commands and code blocks are what a user runs: check they work."""
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT


def readme_blocks(lang: str, section: str) -> list[str]:
    text = (ROOT / "README.md").read_text().split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{lang}\n(.*?)```", text, re.S)


def test_quickstart_is_two_make_commands():
    quick = (ROOT / "README.md").read_text().split("## Quickstart", 1)[1].split("##", 1)[0]
    commands = [l.split("#")[0].strip() for l in re.findall(r"```bash\n(.*?)```", quick, re.S)[0].splitlines()]
    assert commands == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    assert "make test" in (ROOT / ".ci/run").read_text()


def test_python_blocks_run_on_demo_output(dip_photos):
    info, out, _ = dip_photos  # what `make demo` writes when ../shared is present
    blocks = readme_blocks("python", "Reading the data")
    assert len(blocks) == 2
    for block in blocks:
        run = subprocess.run([sys.executable, "-c", block], cwd=Path(out).parent, capture_output=True, text=True,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
    assert f"{info['counts']['samples']} samples in" in run.stdout and "time_segment" in run.stdout


def test_demo_runs_dip_photos_with_shared_and_tiny_generation_without():
    makefile = (ROOT / "Makefile").read_text()
    assert "pipelines/dip.py" in makefile and "configs/dip.photos.yaml" in makefile
    assert "configs/dip.tiny.yaml" in makefile and "../shared/assets" in makefile


def test_cli_run_and_manifest(ray_local, tmp_path):
    from schemas.cli import main

    assert main(["run", "synthetic", "--config", str(ROOT / "configs/synthetic.tiny.yaml"), "--out", str(tmp_path),
                 "--set", "samples=12", "--set", "dataset=iapo", "--set", "poison_every=5"]) == 0
    out = subprocess.run([sys.executable, "-m", "schemas.cli", "manifest", str(tmp_path / "iapo")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "iapo: 7 samples" in out.stdout and "5 rejects" in out.stdout
    assert re.search(r"encode\s+error\s+2", out.stdout) and re.search(r"generate\s+poison\s+3", out.stdout)
    assert main(["run", "nosuchpipeline"]) == 2
