"""The training loop: batches from the shards, one objective, AdamW on the LoRA weights, gradient
clipping, bf16 autocast on GPU, a JSONL metrics log and peft LoRA checkpoints.

`train(cfg, out)` runs in one process; with `workers > 1` pipelines/train.py hands the same
function to Ray Train's TorchTrainer (one worker per GPU, DDP over the LoRA weights, each rank
reading its own shards of every epoch: schemas/reader.py).
"""
from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from configs import TrainConfig
from trainer import objectives as obj
from schemas.store import DatasetDir
from trainer.data import TOKEN_PX, collate, example_maker, examples, negative_pool
from trainer.model import SubjectFlux, to_tensor



def batches(cfg: TrainConfig, skipped: Counter | None = None, selected: dict | None = None):
    stream = examples(cfg.data, cfg.resolution, manifest_query=cfg.manifest_query, split=cfg.split,
                      shuffle=64 if not cfg.overfit else 0, seed=cfg.seed, skipped=skipped, selected=selected,
                      reference_cache=cfg.reference_cache, objective=cfg.objective)
    while True:
        items = [next(stream) for _ in range(cfg.batch_size)]
        yield collate(items)


class Losses:
    """One objective's loss on a batch: flow matching (x_t = (1 - t) x0 + t noise, v = noise - x0)
    with a shared noise and t for a preference pair's two images (Diffusion-DPO)."""

    def __init__(self, model: SubjectFlux, cfg: TrainConfig, bank: tuple[np.ndarray, np.ndarray] | None = None,
                 face_encoder=None, rewards: dict | None = None):
        """bank: (identity ids, centers) of the negative pool (trainer.data.negative_pool)."""
        self.model, self.cfg, self.bank, self.face_encoder, self.rewards = model, cfg, bank, face_encoder, rewards
        self.reward_stats = obj.RewardStats(cfg.reward_window)  # refl: z-scores over ranks and recent steps

    def __call__(self, batch: dict, generator: torch.Generator) -> tuple[torch.Tensor, dict]:
        return getattr(self, self.cfg.objective)(batch, generator)

    def _noise(self, x0: torch.Tensor, generator: torch.Generator):
        noise = torch.randn(x0.shape, generator=generator).to(x0)
        t = torch.rand(x0.shape[0], generator=generator).to(x0)
        return noise, t, (1 - t[:, None, None]) * x0 + t[:, None, None] * noise

    def _inputs(self, batch: dict):
        m, size = self.model, self.cfg.resolution
        ref = m.encode_images(to_tensor(batch["ref"])) if "ref" in batch else None
        return m.encode_text(list(batch["prompt"])), ref, size

    def sft(self, batch, generator, extra: dict | None = None):
        text, ref, size = self._inputs(batch)
        x0 = self.model.encode_images(to_tensor(batch["target"]))
        noise, t, xt = self._noise(x0, generator)
        v = self.model(xt, t, text, size, size, reference=ref)
        loss = obj.sft(v, obj.velocity_target(x0, noise))
        if extra is not None:
            extra.update(x0=x0, xt=xt, t=t, v=v)
        return loss, {"sft": loss.detach()}

    def _preference(self, batch, generator, hidden=None):
        """Policy and reference velocities for winner and loser, one forward each (batched)."""
        text, ref, size = self._inputs(batch)
        x0 = self.model.encode_images(to_tensor(np.concatenate([batch["win"], batch["lose"]])))
        b = len(batch["win"])
        noise, t, _ = self._noise(x0[:b], generator)
        noise, t = torch.cat([noise, noise]), torch.cat([t, t])  # the same noise and t for both
        xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise
        text2 = {k: torch.cat([v, v]) if k != "txt_ids" else v for k, v in text.items()}
        ref2 = None if ref is None else torch.cat([ref, ref])
        v = self.model(xt, t, text2, size, size, reference=ref2, hidden=hidden)
        with self.model.reference_model():
            v_ref = self.model(xt, t, text2, size, size, reference=ref2)
        target = obj.velocity_target(x0, noise)
        return (v[:b], v_ref[:b], v[b:], v_ref[b:], target[:b], target[b:]), b, ref

    def dpo(self, batch, generator):
        (vw, vwr, vl, vlr, tw, tl), _, _ = self._preference(batch, generator)
        errs = [obj.sq_error(p, t) for p, t in ((vw, tw), (vwr, tw), (vl, tl), (vlr, tl))]
        return obj.dpo(*errs, self.cfg.beta_dpo)

    def focus_dpo(self, batch, generator):
        hidden = []
        (vw, vwr, vl, vlr, tw, tl), b, ref = self._preference(batch, generator, hidden)
        n = vw.shape[1]
        # the winner's block states (the first b rows): target tokens, then the reference's
        h_target = [h[:b, :n] for h in hidden]
        h_ref = [h[:b, n:] for h in hidden]
        m_prior = torch.as_tensor(batch["m_prior"]).to(vw)
        m_d = torch.as_tensor(batch["m_d"]).to(vw)
        mask, _, a_focus = obj.focus_map(h_target, h_ref, m_prior, m_d, self.cfg.focus_tau, self.cfg.focus_gamma)
        loss, stats = obj.focus_dpo(vw, vwr, vl, vlr, tw, tl, mask, self.cfg.beta_dpo)
        return loss, dict(stats, a_focus=a_focus.mean().detach())

    def iapo(self, batch, generator):
        (vw, vwr, vl, vlr, tw, tl), _, _ = self._preference(batch, generator)
        ww, wl = (torch.as_tensor(batch[k]).to(vw) for k in ("weight_w", "weight_l"))
        return obj.iapo(vw, vwr, vl, vlr, tw, tl, ww, wl, self.cfg.beta_dpo)

    def id(self, batch, generator):
        """Seed 002 eq. 6: flow matching + lambda_ID * GT-aligned ID loss (eq. 4) + lambda_CL *
        InfoNCE (eq. 5) on the one-step prediction x_hat = x_t - t v_hat, decoded; faces cut with
        the ground-truth landmarks; negatives from the bank without the sample's identities."""
        extra = {}
        l_diff, _ = self.sft(batch, generator, extra)
        size = self.cfg.resolution
        x_hat = extra["xt"] - extra["t"][:, None, None] * extra["v"]
        images = self.model.decode(x_hat, size, size).clamp(0, 1)
        faces, gt, negatives = [], [], []
        for i, (kps, emb, ids) in enumerate(zip(batch["landmarks"], batch["embeddings"], batch["identities"])):
            faces.append(obj.arcface_align(images[i:i + 1].expand(len(kps), -1, -1, -1),
                                           torch.as_tensor(kps, dtype=torch.float32)))
            gt.append(torch.as_tensor(emb))
            negatives += [self._negatives(ids, generator)] * len(kps)
        # one face at a time: insightface's exported embedders have batch 1 baked into a reshape
        pred = torch.cat([self.face_encoder(f[None] * 2 - 1) for f in torch.cat(faces)])
        pred = torch.nn.functional.normalize(pred, dim=-1)
        gt = torch.cat(gt).to(pred)
        l_id = obj.id_loss(pred, gt)
        l_cl = obj.info_nce(pred, gt, torch.stack(negatives).to(pred), self.cfg.id_temperature)
        loss = obj.withanyone_loss(l_diff, l_id, l_cl, self.cfg.lambda_id, self.cfg.lambda_cl)
        return loss, {"sft": l_diff.detach(), "id": l_id.detach(), "contrastive": l_cl.detach()}

    def refl(self, batch, generator):
        """UPER's RL step (seed 001, Alg. 1 lines 13-19; ReFL): the policy generates from noise
        with its current LoRA, without gradients, down to a step drawn from refl_stop of
        refl_steps; one step with gradients predicts x_hat_0 = x_t - t v_hat, decoded; the
        rewards score it (0.2 text, 0.2 aesthetic, 0.4 subject, each z-scored over every rank's
        batch and a window of earlier steps), grad_I R_sub clipped at subject_grad_clip; loss =
        -R_composite. The reward's gradient reaches the LoRA through that last step only.

        Outside training (the fixed-batch check) there is no distribution to z-score over: the
        loss is then minus the weighted sum of the raw rewards' means, and the window is untouched."""
        text, ref, size = self._inputs(batch)
        m, cfg = self.model, self.cfg
        noise = torch.randn((len(batch["prompt"]), (size // TOKEN_PX) ** 2, m.channels), generator=generator)
        noise = noise.to(m.device, m.dtype)
        stop = int(torch.randint(cfg.refl_stop[0], cfg.refl_stop[1] + 1, (1,), generator=generator))
        xt, sigma = m.rollout(noise, text, size, cfg.refl_steps, stop, ref, cfg.refl_guidance)
        t = sigma.expand(len(xt))
        v = m(xt, t, text, size, size, reference=ref, guidance=cfg.refl_guidance)
        image = m.decode(xt - t[:, None, None] * v, size, size).clamp(0, 1)
        prompts = list(batch["prompt"])
        subject = self.rewards["subject"](image, to_tensor(batch["ref"]))
        rewards = {"text": self.rewards["text"](image, prompts), "aesthetic": self.rewards["aesthetic"](image, prompts),
                   "subject": obj.clipped_reward(subject, image, cfg.subject_grad_clip)}
        stats = {f"reward_{k}": v.detach().mean() for k, v in rewards.items()}
        stats.update(refl_stop=stop, refl_sigma=float(sigma))
        if not torch.is_grad_enabled():
            return -sum(float(w) * rewards[k].mean() for k, w in cfg.reward_weights.items()), stats
        composite = obj.composite_reward(rewards, cfg.reward_weights, self.reward_stats)
        return -composite.mean(), stats

    def _negatives(self, identities, generator: torch.Generator) -> torch.Tensor:
        """id_negatives bank centers drawn at random, the sample's own identities excluded (by id:
        ids are hashes, not rows of the bank)."""
        ids, centers = self.bank
        keep = np.flatnonzero(~np.isin(ids, [i for i in identities if i >= 0]))
        pick = keep[torch.randperm(len(keep), generator=generator)[: self.cfg.id_negatives].numpy()]
        return torch.as_tensor(centers[pick])


def train(cfg: TrainConfig, out: str, rank: int = 0, world: int = 1) -> dict:
    """Train cfg.steps steps; returns the run's summary. Rank 0 writes metrics.jsonl and the LoRA
    checkpoints under `out` (the last in out/lora)."""
    return fit(cfg, out, rank, world)[1]


def fit(cfg: TrainConfig, out: str, rank: int = 0, world: int = 1) -> tuple[SubjectFlux, dict]:
    """train(), also returning the trained model."""
    example_maker(DatasetDir.open(cfg.data).dataset, cfg.objective)  # the objective trains on this dataset
    torch.manual_seed(cfg.seed)
    device = "cuda" if cfg.use_gpu and torch.cuda.is_available() else "cpu"
    # bf16 base weights on a GPU (FLUX.1-dev is 24 GB so, 48 in float32); peft keeps the LoRA in float32
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = SubjectFlux(cfg.model, cfg.lora_rank, device=device, dtype=dtype, guidance=cfg.guidance)
    if world > 1:
        import ray.train.torch

        model.transformer = ray.train.torch.prepare_model(model.transformer)
    bank = negative_pool(cfg.data) if cfg.objective == "id" else None  # id trains on multiid only
    face_encoder = torch.jit.load(cfg.face_encoder, map_location=device).eval() if cfg.objective == "id" else None
    rewards = None
    if cfg.objective == "refl":
        from trainer.rewards import HPSReward, SubjectReward, TextReward

        rewards = {"text": TextReward(cfg.reward_models["text"], device), "subject": SubjectReward(
            cfg.reward_models["subject"], device=device, weights=cfg.r_sub_weights,
            copy_paste_similarity=cfg.copy_paste_similarity, copy_paste_penalty=cfg.copy_paste_penalty),
            "aesthetic": HPSReward(cfg.reward_models["aesthetic"], device)}
    losses = Losses(model, cfg, bank, face_encoder, rewards)
    params = model.lora_parameters()
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    skipped, selected = Counter(), {}
    stream = batches(cfg, skipped, selected)
    fixed = next(stream)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = (out_dir / "metrics.jsonl").open("a") if rank == 0 else None
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)

    def fixed_loss() -> float:  # the same batch, noise and t before and after training
        with torch.no_grad(), autocast:
            return float(losses(fixed, torch.Generator().manual_seed(cfg.seed))[0])

    first = fixed_loss()
    generator = torch.Generator().manual_seed(cfg.seed + 1000 * rank)
    for step in range(1, cfg.steps + 1):
        batch = fixed if cfg.overfit else next(stream)
        t0 = time.perf_counter()
        with autocast:
            loss, stats = losses(batch, torch.Generator().manual_seed(cfg.seed) if cfg.overfit else generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        optimizer.step()
        record = {"step": step, "loss": loss.item(), "grad_norm": float(grad_norm), "lr": cfg.learning_rate,
                  "seconds": time.perf_counter() - t0, "skipped": dict(skipped), **_floats(stats)}
        if log and (step % cfg.log_every == 0 or step == cfg.steps):
            log.write(json.dumps(record) + "\n")
            log.flush()
        if rank == 0 and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            model.save_lora(out_dir / f"checkpoint-{step:06d}")
    last = fixed_loss()
    summary = {"steps": cfg.steps, "objective": cfg.objective, "data": cfg.data, "fixed_batch_loss_first": first,
               "fixed_batch_loss_last": last, "skipped": dict(skipped), **selected}
    if rank == 0:
        model.save_lora(out_dir / "lora")
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        log.close()
    return model, summary


def _floats(stats: dict) -> dict:
    return {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in stats.items()
            if (v.numel() == 1 if torch.is_tensor(v) else np.ndim(v) == 0)}
