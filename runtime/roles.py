"""The model roles: one registry, filled where each role is declared.

A role is what a model step asks for (`plan.model("caption", "vlm", ...)`): the worker class that
holds the model (workers/), the builder of its random-weight model for the tiny profile and the
benchmarks (builders/), its cost at production size (runtime/costs.py's Cost, what `pools: auto`
and the bound divide the GPUs by), its simulated accelerator's output (workers/simulated.py) and
its config field (a `ModelSpec` named after the role on the pipeline's config). A worker class
declares all of it and registers itself:

    @register_worker
    class VLM(Worker):
        role = "vlm"
        builder = Builder("builders.vlm")
        cost = Cost(0.8, per_batch=2.0, min_gpus=0.5, source="...")
        simulated = staticmethod(simulated_vlm)   # (stand-in, row) -> outputs

A model with no pipeline worker (the trainer's reward models) registers a `Role` of its own. What a
role lacks is named by `Plan.check` (cost, builder, config field) before anything runs.

Builders: `ensure_for(cfg)` builds every model a config points at under `<root>/tiny-models/<role>`
that is not built yet, through the builder module the role names (imported only then).
"""
from __future__ import annotations

import importlib
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from runtime.costs import Cost


class RoleError(ValueError):
    """A role declared incompletely, or asked for and never declared: one line naming it."""


@dataclass(frozen=True)
class Builder:
    """Where a role's random-weight model is built: `module` has build_tiny(directory, seed=0, **kwargs)
    and, with `full`, build_full (production size, for GPU benchmarks)."""

    module: str
    kwargs: dict = field(default_factory=dict)
    full: bool = True


# A role whose model needs no building (its weights ship in a wheel: PP-OCRv4 in rapidocr's).
NOTHING_TO_BUILD = Builder("", full=False)


@dataclass(frozen=True)
class Role:
    name: str
    worker: type | None  # the actor class of model steps; None: a model no pipeline step runs
    builder: Builder | None  # None: not declared (an error where it is needed)
    cost: Cost | None  # None: not declared (pools: auto and the bound cannot size it)
    simulated: Callable | None  # (stand-in, row) -> outputs of the real shapes (workers/simulated.py)

    def problems(self) -> list[str]:
        """What this role does not declare, for a model step that runs it."""
        return [f"no {what}" for what, value in (("builder", self.builder), ("cost", self.cost)) if value is None]


ROLES: dict[str, Role] = {}


def register(role: Role) -> Role:
    """Add a role; the same name twice is an error unless it is the same worker class re-imported
    (a script run as __main__ and imported again)."""
    old = ROLES.get(role.name)
    if old is not None and not _same(old.worker, role.worker):
        raise RoleError(f"role {role.name!r} is declared twice: by {_where(old.worker)} and {_where(role.worker)}")
    ROLES[role.name] = role
    return role


def register_worker(cls: type) -> type:
    """Class decorator: register a worker class under its `role` with what the class declares."""
    name = cls.__dict__.get("role")
    if not isinstance(name, str) or not name:
        raise RoleError(f"{cls.__qualname__}: a registered worker declares its role (role = \"...\")")
    register(Role(name, cls, getattr(cls, "builder", None), getattr(cls, "cost", None),
                  getattr(cls, "simulated", None)))
    return cls


def _same(a, b) -> bool:
    """One class, or the same class of a module imported a second time (a reload)."""
    return a is b or (a is not None and b is not None and (a.__module__, a.__qualname__) == (b.__module__, b.__qualname__))


def _where(cls) -> str:
    return "?" if cls is None else f"{cls.__module__}.{cls.__qualname__}"


def get_role(name: str) -> Role:
    try:
        return ROLES[name]
    except KeyError:
        raise RoleError(f"no model role {name!r} is declared (known: {', '.join(sorted(ROLES)) or 'none'})") from None


def roles() -> dict[str, Role]:
    return dict(ROLES)


def costs() -> dict[str, Cost]:
    """role -> Cost of every role that declares one: the default cost table."""
    return {name: r.cost for name, r in sorted(ROLES.items()) if r.cost is not None}


# --- building the random-weight models --------------------------------------------------------------

SIZES = ("tiny", "full")
DONE = ".built"  # written last: a directory without it is a build that did not finish


def build(role: str, directory: str | Path, seed: int = 0, size: str = "tiny") -> Path:
    """Build one role's model into `directory` (replacing it), atomically: a half-built model is
    never mistaken for a finished one."""
    r = get_role(role)
    if r.builder is None:
        raise RoleError(f"role {role!r} declares no builder")
    if r.builder is NOTHING_TO_BUILD or (size == "full" and not r.builder.full):
        raise RoleError(f"role {role!r} has no {size} builder")
    directory = Path(directory)
    tmp = directory.with_name(f"_tmp-{uuid.uuid4().hex[:8]}-{directory.name}")
    try:
        getattr(importlib.import_module(r.builder.module), f"build_{size}")(tmp, seed=seed, **r.builder.kwargs)
        (tmp / DONE).write_text(marker(role, size))
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def marker(role: str, size: str) -> str:
    """What DONE holds: the role, and the size unless tiny (so older tiny caches stay valid)."""
    return role if size == "tiny" else f"{role} {size}"


def buildable(size: str = "tiny") -> list[str]:
    """The roles with a builder of that size."""
    return sorted(n for n, r in ROLES.items() if r.builder is not None and r.builder is not NOTHING_TO_BUILD
                  and (size == "tiny" or r.builder.full))


def ensure(root: str | Path, names=None, seed: int = 0, size: str = "tiny") -> dict[str, Path]:
    """The model of each role under root/<role> (tiny, or production-size with size="full"),
    built if missing or built at the other size (a tiny model never passes for a full one)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in names or buildable(size):
        d = root / name
        done = d / DONE
        out[name] = d if done.exists() and done.read_text() == marker(name, size) else build(name, d, seed, size)
    return out


def ensure_for(cfg) -> dict[str, Path]:
    """Build the tiny models a config points at: every model path `<root>/tiny-models/<role>` (the
    tiny profile's layout: a ModelSpec's model, a plain path field, a dict of paths) not built yet."""
    built = {}
    for _, value in cfg:
        values = [getattr(value, "model", None)] if hasattr(value, "model") else (
            list(value.values()) if isinstance(value, dict) else [value])
        for v in values:
            path = Path(v) if isinstance(v, str) else None
            if path is not None and path.parent.name == "tiny-models":
                if path.name not in ROLES:
                    raise RoleError(f"{v}: no model role {path.name!r} is declared to build it "
                                    f"(known: {', '.join(sorted(ROLES))})")
                built.update(ensure(path.parent, [path.name]))
    return built
