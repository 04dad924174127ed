"""The GPU image, checked without Docker: docker/Dockerfile is parsed (continuation lines, comments,
ARG defaults) and its base image, install step and copied paths are held against the repository."""
from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """Dockerfile text -> [(INSTRUCTION, arguments)], continuation lines joined and comment lines
    (also those inside a continued instruction) dropped. Enough for checks; not a full parser."""
    instructions, current = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # Docker drops comment lines, also in the middle of a continued instruction
        if line.endswith("\\"):
            current += line[:-1].rstrip() + " "
            continue
        current += line
        word, _, args = current.partition(" ")
        instructions.append((word.upper(), args.strip()))
        current = ""
    if current:
        raise ValueError(f"Dockerfile ends inside a continued instruction: {current!r}")
    return instructions


def substitute(value: str, args: dict[str, str]) -> str:
    """$NAME / ${NAME} -> the ARG default (Docker's own substitution, without modifiers)."""
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args.get(m.group(1) or m.group(2), m.group(0)), value)


def base_image(instructions) -> str:
    """The image of the last FROM (the final stage), ARG defaults substituted."""
    args, image = {}, None
    for word, rest in instructions:
        if word == "ARG" and "=" in rest:
            name, _, default = rest.partition("=")
            args[name.strip()] = default.strip().strip("\"'")
        elif word == "FROM":
            tokens = [t for t in rest.split() if not t.startswith("--")]
            image = substitute(tokens[0], args)
    if image is None:
        raise ValueError("no FROM")
    return image


def copy_sources(instructions) -> list[str]:
    """Source paths of every COPY / ADD from the build context (not `--from=` another stage)."""
    sources = []
    for word, rest in instructions:
        if word not in ("COPY", "ADD"):
            continue
        if rest.startswith("["):
            tokens = json.loads(rest)
        else:
            tokens = shlex.split(rest)
        flags = [t for t in tokens if t.startswith("--")]
        if any(f.startswith("--from") for f in flags):
            continue
        paths = [t for t in tokens if not t.startswith("--")]
        if len(paths) < 2:
            raise ValueError(f"{word} {rest!r}: needs a source and a destination")
        sources += paths[:-1]
    return sources


def installs_gpu_extra(instructions) -> bool:
    """Some RUN pip-installs the project itself (`.` or `./`) with the gpu extra."""
    project = re.compile(r"""pip3?\s+install\b[^;&|]*?\s["']?\./?\[([^\]]*)\]""")
    return any(
        any("gpu" in [e.strip() for e in m.group(1).split(",")] for m in project.finditer(rest))
        for word, rest in instructions if word == "RUN"
    )


GPU_TAG = re.compile(r"^rayproject/ray:(?P<ray>[\w.]+)-py(?P<py>3\d+)-(?:gpu|cu\d+)\b")


def check_dockerfile(text: str, root: Path) -> list[str]:
    """Every problem found; empty when the Dockerfile builds the GPU image from this repository."""
    ins = parse_dockerfile(text)
    problems = []
    image = base_image(ins)
    if not GPU_TAG.match(image):
        problems.append(f"FROM {image}: not a rayproject/ray image with a -gpu / -cuXXX tag")
    if not installs_gpu_extra(ins):
        problems.append('no RUN installs the project with its gpu extra (pip install ".[gpu]")')
    for src in copy_sources(ins):
        if src in (".", "./") or any(ch in src for ch in "*?["):
            problems.append(f"COPY {src}: copy named paths (there is no .dockerignore to keep .venv out)")
        elif not (root / src).exists():
            problems.append(f"COPY {src}: no such path in the repository")
    if not any(word == "WORKDIR" for word, _ in ins):
        problems.append("no WORKDIR")
    return problems


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def instructions():
    return parse_dockerfile(DOCKERFILE.read_text())


def test_dockerfile_builds_the_gpu_image_from_this_repository():
    assert check_dockerfile(DOCKERFILE.read_text(), ROOT) == []


def test_base_is_a_ray_gpu_image_matching_the_project_pins(instructions, pyproject):
    m = GPU_TAG.match(base_image(instructions))
    assert m, base_image(instructions)
    ray_pin = next(Requirement(d) for d in pyproject["project"]["dependencies"] if Requirement(d).name == "ray")
    # the image's Ray is kept (pip -c), so it must satisfy the pin or the install cannot resolve
    assert ray_pin.specifier.contains(m["ray"]), (m["ray"], str(ray_pin.specifier))
    python = f"{m['py'][0]}.{m['py'][1:]}"
    assert SpecifierSet(pyproject["project"]["requires-python"]).contains(python + ".0"), python


def test_every_package_of_the_distribution_is_copied(instructions, pyproject):
    packages = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    copied = {s.rstrip("/") for s in copy_sources(instructions)}
    assert "pyproject.toml" in copied
    assert set(packages) <= copied, sorted(set(packages) - copied)


def test_pyproject_declares_the_gpu_extra(pyproject):
    gpu = pyproject["project"]["optional-dependencies"]["gpu"]
    assert gpu and all(Requirement(r) for r in gpu)


# The checks themselves must be able to fail: each broken Dockerfile is caught for its own reason.
GOOD = """\
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu
FROM ${RAY_IMAGE}
WORKDIR /home/ray/app
# a comment
COPY --chown=ray:users pyproject.toml ./
RUN pip install --no-cache-dir \\
    # a comment inside a continued instruction
    ".[gpu]"
"""


@pytest.mark.parametrize("broken, reason", [
    (GOOD.replace("-py311-gpu", "-py311-cpu"), "not a rayproject/ray image"),
    (GOOD.replace("rayproject/ray:", "nvidia/cuda:"), "not a rayproject/ray image"),
    (GOOD.replace('".[gpu]"', '".[s3]"'), "gpu extra"),
    (GOOD.replace('".[gpu]"', "subjectforge"), "gpu extra"),
    (GOOD.replace("pyproject.toml ./", "requirements-gpu.txt ./"), "no such path"),
    (GOOD.replace("pyproject.toml ./", ". ./"), "copy named paths"),
    (GOOD.replace("WORKDIR /home/ray/app\n", ""), "no WORKDIR"),
])
def test_check_catches_a_broken_dockerfile(broken, reason):
    assert check_dockerfile(GOOD, ROOT) == []
    problems = check_dockerfile(broken, ROOT)
    assert any(reason in p for p in problems), problems


def test_parser_joins_continuations_and_drops_comments():
    ins = parse_dockerfile(GOOD)
    assert [w for w, _ in ins] == ["ARG", "FROM", "WORKDIR", "COPY", "RUN"]
    assert ins[-1][1] == 'pip install --no-cache-dir ".[gpu]"'
    with pytest.raises(ValueError):
        parse_dockerfile("FROM x\nRUN a \\\n")
