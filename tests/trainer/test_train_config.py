"""Each objective trains with its paper's settings unless the config says otherwise
(configs/train.py: OBJECTIVE_DEFAULTS, shown in configs/train.gpu.yaml)."""
import pytest
import yaml

from configs.train import OBJECTIVE_DEFAULTS, TrainConfig
from runtime.config import ConfigError, load_config
from tests.conftest import ROOT

GPU = ROOT / "configs" / "train.gpu.yaml"


def test_each_objective_takes_its_papers_settings():
    focus = TrainConfig()
    assert (focus.objective, focus.learning_rate, focus.batch_size, focus.lora_rank, focus.steps) == (
        "focus_dpo", 1e-8, 1, 32, 2000)  # seed 000 sec. 5.1
    assert TrainConfig(objective="iapo").beta_dpo == 1000.0  # seed 003 Table V: 2000 in the code's convention
    assert TrainConfig(objective="refl").lora_rank == 4 and TrainConfig(objective="sft").steps == 5000  # seed 001
    assert TrainConfig(objective="id").batch_size == 4  # seed 002 app. E
    assert TrainConfig(objective="dpo").learning_rate == 1e-4  # no paper section: the class default


def test_what_the_config_sets_wins():
    assert TrainConfig(objective="refl", lora_rank=8).lora_rank == 8
    assert TrainConfig(objective="iapo", objectives={"iapo": {"beta_dpo": 2500}}).beta_dpo == 2500
    tiny = load_config(TrainConfig, ROOT / "configs" / "train.tiny.yaml")
    assert (tiny.steps, tiny.learning_rate, tiny.lora_rank) == (20, 1e-3, 4)
    with pytest.raises(ConfigError, match=r"objectives.focus_dpo: unknown fields \['lr'\]"):
        load_config(TrainConfig, GPU, ["objectives.focus_dpo.lr=1"])


def test_the_gpu_profile_shows_the_same_settings():
    assert yaml.safe_load(GPU.read_text())["objectives"] == OBJECTIVE_DEFAULTS
    gpu = load_config(TrainConfig, GPU)
    assert (gpu.learning_rate, gpu.batch_size, gpu.lora_rank, gpu.steps) == (1e-8, 1, 32, 2000)
    assert load_config(TrainConfig, GPU, ["objective=iapo"]).beta_dpo == 1000.0


def test_refl_stop_must_lie_within_the_rollout():
    from configs import TrainConfig

    assert TrainConfig(objective="refl").refl_stop == (21, 27) and TrainConfig().refl_steps == 28
    for bad in ((3, 2), (-1, 4), (0, 28)):
        with pytest.raises(ValueError, match="refl_stop"):
            TrainConfig(objective="refl", refl_stop=bad)
