import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
sys.path.insert(0, str(ROOT))


def assets_or_skip() -> Path:
    """Real-asset tests: CI always has ../shared, so there a missing folder is a failure; a user's
    machine without it skips."""
    if ASSETS.is_dir():
        return ASSETS
    if os.environ.get("CI"):
        pytest.fail(f"{ASSETS} is missing in CI")
    pytest.skip(f"{ASSETS} not present on this machine")


@pytest.fixture(scope="session")
def ray_local():
    import ray

    if not ray.is_initialized():
        # workers import test modules (classes defined in tests are pickled by reference)
        paths = [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
