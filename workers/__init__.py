"""What holds a model: one actor class per model role. Importing the package imports every module
in it, so every role they declare is registered (runtime/roles.py): a new role is a new module."""
import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")
