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
    # the demo's output folder has its dataset card, with the count the run wrote
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(str(Path(out) / "dip" / "README.md"))
    assert card.data.license and f"- samples: {info['counts']['samples']}" in card.text


def test_demo_runs_dip_photos_with_shared_and_tiny_generation_without():
    makefile = (ROOT / "Makefile").read_text()
    assert "pipelines/dip.py" in makefile and "configs/dip.photos.yaml" in makefile
    assert "configs/dip.tiny.yaml" in makefile and "../shared/assets" in makefile


def test_cli_run_and_manifest(ray_local, tmp_path):
    from runtime.cli import main

    assert main(["run", "synthetic", "--config", str(ROOT / "configs/synthetic.tiny.yaml"), "--out", str(tmp_path),
                 "--set", "samples=12", "--set", "dataset=iapo", "--set", "poison_every=5"]) == 0
    out = subprocess.run([sys.executable, "-m", "runtime.cli", "manifest", str(tmp_path / "iapo")],
                         capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "iapo: 7 samples" in out.stdout and "5 rejects" in out.stdout
    assert re.search(r"encode\s+unencodable\s+2", out.stdout) and re.search(r"generate\s+poison\s+3", out.stdout)
    assert main(["run", "nosuchpipeline"]) == 2


def readme_plan_tables() -> list[tuple[str, str, list[tuple[list[str], set[str]]]]]:
    """Each `<!-- plan: NAME CONFIG -->` table: (plan name, config, [(steps of a row, rejects of the row)])."""
    text = (ROOT / "README.md").read_text()
    tables = []
    for m in re.finditer(r"<!-- plan: (.+) (configs/\S+) -->\n((?:\|.*\n)+)", text):
        rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in m.group(3).splitlines()[2:]]
        tables.append((m.group(1), m.group(2), [([n.strip() for n in r[0].split(",")],
                                                 {x.strip() for x in r[-1].split(",") if x.strip()}) for r in rows]))
    return tables


def test_dag_tables_are_the_plans():
    """Every pipeline's DAG table lists its plan's steps in order (resume aside), and each row the
    exact rejects its steps declare."""
    from runtime.config import load_config
    from runtime.registry import datasets, get_dataset
    from runtime.steps import Resume

    tables = readme_plan_tables()
    # one table per plan of every dataset's gpu profile
    assert sorted(t[0] for t in tables) == sorted(
        p.name for s in datasets().values() for p in s.plans(load_config(s.config, s.profiles["gpu"]), None))
    for name, config, rows in tables:
        spec = get_dataset(name.split()[0])
        cfg = load_config(spec.config, ROOT / config)
        (plan,) = [p for p in spec.plans(cfg, None) if p.name == name]
        steps = {s.name: s for s in plan.check().steps}
        assert [n for r, _ in rows for n in r] == [s for s in steps if not isinstance(steps[s], Resume)], name
        for names, rejects in rows:
            declared = {x for n in names for x in steps[n].rejects}
            assert rejects == declared, f"{name} {names}: README {sorted(rejects)} != plan {sorted(declared)}"


def test_readme_has_a_table_of_contents_of_its_sections():
    text = (ROOT / "README.md").read_text()
    contents = text.split("Contents:", 1)[1].split("\n\n", 1)[0]
    anchors = re.findall(r"\]\(#([^)]+)\)", contents)
    for heading in re.findall(r"^## (.+)$", text, re.M):
        slug = re.sub(r"[^a-z0-9 _-]", "", heading.lower()).replace(" ", "-")
        assert slug in anchors, heading
