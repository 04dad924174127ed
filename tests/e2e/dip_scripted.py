"""DIP's main with the scripted doubles of tests/dip_doubles.py for its models (the real workers'
wiring and batch protocol, no weights to load), each VLM batch taking half a second, a model's pace:
the run lasts long enough to be hit mid-way however fast the machine, and the actors that restart
are back in a second. Submitted as a Ray job by tests/e2e/test_cluster.py's node-loss test; run as
a process by the chaos test and the driver-kill test of tests/pipelines/test_faults.py.

    python tests/e2e/dip_scripted.py --config dip.yaml --out s3://bucket/lost
"""
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipelines import dip  # noqa: E402
from tests.dip_doubles import DOUBLES, ScriptedVLM  # noqa: E402


class PacedVLM(ScriptedVLM):
    def predict(self, inputs):
        time.sleep(0.5)
        return super().predict(inputs)


if __name__ == "__main__":
    dip.main(sys.argv[1:], workers=dict(DOUBLES, vlm=PacedVLM))
