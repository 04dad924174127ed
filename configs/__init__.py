"""The typed config of each pipeline, one module per pipeline (configs/<pipeline>.py), beside its
YAML profiles (configs/<pipeline>.<profile>.yaml). Unknown keys are errors. Which config belongs to
which pipeline is the pipeline's spec's (runtime/registry.py)."""
from configs.dip import DIPConfig
from configs.iapo import IAPOConfig
from configs.multiid import MultiIDConfig
from configs.synthetic import SyntheticConfig
from configs.train import TrainConfig
from configs.uper import UPERConfig
from runtime.config import ModelSpec

__all__ = ["DIPConfig", "IAPOConfig", "ModelSpec", "MultiIDConfig", "SyntheticConfig", "TrainConfig", "UPERConfig"]
