"""The typed config of each pipeline, one module per pipeline (configs/<pipeline>.py), beside its
YAML profiles (configs/<pipeline>.<profile>.yaml). Unknown keys are errors."""
from configs.dip import DIPConfig
from configs.iapo import IAPOConfig
from configs.multiid import MultiIDConfig
from configs.synthetic import SyntheticConfig
from configs.train import TrainConfig
from configs.uper import UPERConfig
from runtime.config import ModelSpec

PIPELINE_CONFIGS = {"dip": DIPConfig, "multiid": MultiIDConfig, "uper": UPERConfig, "iapo": IAPOConfig,
                    "synthetic": SyntheticConfig, "train": TrainConfig}
__all__ = ["DIPConfig", "IAPOConfig", "ModelSpec", "MultiIDConfig", "PIPELINE_CONFIGS", "SyntheticConfig",
           "TrainConfig", "UPERConfig"]
