"""Train a LoRA on one dataset's shards with one paper's objective (FocusDPO, Diffusion-DPO, IAPO,
flow-matching SFT, WithAnyone's ID losses).

    python pipelines/train.py --config configs/train.tiny.yaml --out ./out/train
    ray job submit --working-dir . -- python pipelines/train.py --config configs/train.gpu.yaml --out /mnt/runs/dip
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from configs import TrainConfig
from runtime.driver import parse_args
from runtime.registry import Pipeline, register
from runtime.roles import ensure_for


def main(argv=None) -> dict:
    import trainer.rewards  # noqa: F401  (declares the reward models' roles, which ensure_for builds)
    from trainer.loop import train

    cfg, out = parse_args(__doc__.splitlines()[0], TrainConfig, argv)
    ensure_for(cfg)  # tiny profile: the random-weight FLUX the config points at
    if cfg.workers <= 1:
        summary = train(cfg, out)
    else:
        summary = train_on_ray(cfg, out)
    print(f"{cfg.objective} on {cfg.data}: fixed-batch loss {summary['fixed_batch_loss_first']:.4f} -> "
          f"{summary['fixed_batch_loss_last']:.4f} after {summary['steps']} steps; LoRA in {out}/lora")
    return summary


def train_on_ray(cfg: TrainConfig, out: str) -> dict:
    """The same loop on Ray Train's TorchTrainer: one worker per GPU, DDP over the LoRA weights."""
    import ray.train
    from ray.train import ScalingConfig
    from ray.train.torch import TorchTrainer

    # Ray Train's workers run in their own directories: local paths must not be relative
    local = lambda p: str(Path(p).resolve()) if p and Path(p).exists() else p  # noqa: E731
    cfg = cfg.model_copy(update={"model": local(cfg.model), "data": local(cfg.data),
                                 "face_encoder": local(cfg.face_encoder),
                                 "reward_models": {k: local(v) for k, v in cfg.reward_models.items()}})
    out = str(Path(out).resolve()) if "://" not in out else out

    def loop(config):
        from trainer.loop import train

        ctx = ray.train.get_context()
        summary = train(TrainConfig(**config), out, rank=ctx.get_world_rank(), world=ctx.get_world_size())
        ray.train.report(summary)

    TorchTrainer(loop, train_loop_config=cfg.model_dump(),
                 scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu)).fit()
    return json.loads((Path(out) / "summary.json").read_text())  # rank 0's


SPEC = register(Pipeline(name="train", description=__doc__.splitlines()[0], config=TrainConfig, main=main))


if __name__ == "__main__":
    main()
