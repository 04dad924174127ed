"""Dataset name -> schema, for everything that opens a dataset folder by the name it carries
(validate, the reader, the report, the trainer).

Schemas are not listed here: each dataset's module registers its own (through its DatasetSpec,
runtime/registry.py), and `discover()` imports the modules that declare datasets the first time a
name is asked for that no module has registered yet:
- the project's dataset modules: every module of the `pipelines` folder beside this package (a
  pipeline that is a dataset declares `SPEC`);
- installed plugins: every module named by an entry point of the group `subjectforge.datasets`
  (a package's pyproject: `[project.entry-points."subjectforge.datasets"] tryon = "tryon.spec"`).

This is the one place that knows where dataset modules are; it imports them by name at run time,
so the data contract itself depends on nothing above it.
"""
from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path

from schemas.contract import DatasetSchema

ENTRY_POINTS = "subjectforge.datasets"
PROJECT = Path(__file__).resolve().parents[1]
_SCHEMAS: dict[str, DatasetSchema] = {}
_discovered = False


class UnknownDataset(ValueError):
    """A dataset name no module declares."""


class DatasetModuleError(ImportError):
    """A dataset module that fails to import (its spec incomplete, a missing dependency): named."""


def register_schema(schema: DatasetSchema) -> DatasetSchema:
    """Add a schema; a second, different schema of the same name is an error."""
    old = _SCHEMAS.get(schema.name)
    if old is not None and old != schema:
        raise ValueError(f"two different schemas are registered as dataset {schema.name!r}")
    _SCHEMAS[schema.name] = schema
    return schema


def dataset_modules() -> list[str]:
    """The names of the modules that declare datasets: the project's pipelines, then plugins."""
    from importlib.metadata import entry_points

    folder = PROJECT / "pipelines"
    names = [f"pipelines.{m.name}" for m in pkgutil.iter_modules([str(folder)]) if not m.name.startswith("_")]
    return names + [ep.value.split(":")[0] for ep in entry_points(group=ENTRY_POINTS)]


def discover() -> None:
    """Import every dataset module once (their SPECs register themselves and their schemas). A
    module that fails to import is an error naming it: a dataset never silently disappears."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    if str(PROJECT) not in sys.path and importlib.util.find_spec("pipelines") is None:
        sys.path.append(str(PROJECT))  # a checkout used without installing it
    for name in dataset_modules():
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except Exception as e:
            _discovered = False
            raise DatasetModuleError(f"dataset module {name}: {e}") from e


def schemas() -> dict[str, DatasetSchema]:
    """Every registered schema by name, the dataset modules imported first."""
    discover()
    return dict(sorted(_SCHEMAS.items()))


def get_schema(name: str) -> DatasetSchema:
    if name not in _SCHEMAS:
        discover()
    try:
        return _SCHEMAS[name]
    except KeyError:
        raise UnknownDataset(f"unknown dataset {name!r}; known: {', '.join(sorted(_SCHEMAS))} (a dataset is "
                             f"declared by a module of pipelines/ or by a package's {ENTRY_POINTS!r} entry "
                             f"point)") from None
