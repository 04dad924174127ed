"""The subject-conditioned flow transformer the objectives train: FLUX's transformer with LoRA,
conditioned on a reference image the OminiControl / UNO way.

The reference is VAE-encoded and packed like the target; its tokens are appended to the noisy
target tokens, with the same position ids shifted right by the target's width in tokens, so the
pair reads as a diptych to the rotary embedding (Subjects200K's layout) and no new weights are
needed. The transformer sees one timestep for the whole sequence; only the target tokens' outputs
are the velocity. Text goes through the pipeline's own encoders (CLIP pooled + T5), frozen.

LoRA (peft) sits on the attention projections of every block; the frozen reference model of the
DPO objectives is the same module with the adapter disabled, so the base weights exist once.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()  # the tokenizers' per-batch truncation notices would fill the log

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]


class SubjectFlux(torch.nn.Module):
    def __init__(self, model: str, lora_rank: int, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 guidance: float = 1.0, lora_targets=None):
        super().__init__()
        from diffusers import FluxPipeline
        from peft import LoraConfig, get_peft_model

        pipe = FluxPipeline.from_pretrained(model, dtype=dtype)
        self.pipe = pipe  # text encoders, VAE and the helpers for packing; never trained
        for part in (pipe.vae, pipe.text_encoder, pipe.text_encoder_2, pipe.transformer):
            part.requires_grad_(False)
        targets = lora_targets or [n for n in LORA_TARGETS if _has_module(pipe.transformer, n)]
        config = LoraConfig(r=lora_rank, lora_alpha=lora_rank, init_lora_weights=True, target_modules=targets)
        self.transformer = get_peft_model(pipe.transformer, config)  # B = 0 at init: policy == reference
        pipe.vae.to(device)
        pipe.text_encoder.to(device)
        pipe.text_encoder_2.to(device)
        self.transformer.to(device)
        self.device, self.dtype, self.guidance = device, dtype, guidance
        self.vae_scale = pipe.vae_scale_factor  # 8: FLUX's VAE; tokens are 2 x 2 latents (16 px)
        self.channels = pipe.transformer.config.in_channels  # a packed token: 4 latents of 16 channels

    # --- frozen encoders ------------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> dict:
        embeds, pooled, text_ids = self.pipe.encode_prompt(prompts, prompt_2=None, device=self.device,
                                                           max_sequence_length=128)
        return {"encoder_hidden_states": embeds, "pooled_projections": pooled, "txt_ids": text_ids}

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8-range float images [B, 3, H, W] in [0, 1] -> packed, normalised latents [B, N, 64]."""
        vae = self.pipe.vae
        x = images.to(self.device, vae.dtype) * 2 - 1
        latents = vae.encode(x).latent_dist.mode()
        latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
        b, c, h, w = latents.shape
        return self.pipe._pack_latents(latents, b, c, h, w)

    def decode(self, tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Packed latents -> images [B, 3, H, W] in [0, 1], differentiable (ReFL, the ID loss)."""
        vae = self.pipe.vae
        latents = self.pipe._unpack_latents(tokens, height, width, self.vae_scale)
        latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        return (vae.decode(latents.to(vae.dtype)).sample.float() + 1) / 2

    def image_ids(self, batch: int, height: int, width: int, shift: int = 0) -> torch.Tensor:
        h, w = height // (self.vae_scale * 2), width // (self.vae_scale * 2)
        ids = self.pipe._prepare_latent_image_ids(batch, h, w, self.device, self.dtype)
        ids[:, 2] += shift
        return ids

    # --- the trained model ------------------------------------------------------------------------
    def forward(self, noisy: torch.Tensor, t: torch.Tensor, text: dict, height: int, width: int,
                reference: torch.Tensor | None = None, hidden: list | None = None,
                guidance: float | None = None) -> torch.Tensor:
        """Velocity for the noisy target tokens [B, N, 64] at times t [B] in [0, 1]; `reference`:
        packed reference latents [B, R, 64] or None (text-to-image, IAPO). `hidden`: a list that
        receives each block's image-token states [B, N (+ R), d] (FocusDPO's eq. 2). `guidance`:
        FLUX [dev]'s distilled guidance input (default: the training value)."""
        n = noisy.shape[1]
        ids = self.image_ids(1, height, width)
        tokens = noisy
        if reference is not None:
            ref_ids = self.image_ids(1, height, width, shift=width // (self.vae_scale * 2))
            ids = torch.cat([ids, ref_ids[: reference.shape[1]]], dim=0)
            tokens = torch.cat([noisy, reference.to(noisy.dtype)], dim=1)
        guidance = torch.full((noisy.shape[0],), self.guidance if guidance is None else guidance, device=self.device)
        with _capture(self.blocks(), hidden):
            out = self.transformer(hidden_states=tokens, timestep=t.to(self.device), img_ids=ids, guidance=guidance,
                                   return_dict=False, **text)[0]
        return out[:, :n]

    def scheduler(self, steps: int, tokens: int):
        """FluxPipeline's sampling schedule for `steps` steps at `tokens` image tokens: its
        FlowMatchEulerDiscreteScheduler (a fresh copy: the step index is its state), its sigmas
        1 .. 1/steps shifted by the resolution-dependent mu. `.sigmas` ends with 0."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

        sched = type(self.pipe.scheduler).from_config(self.pipe.scheduler.config)
        c = sched.config
        mu = calculate_shift(tokens, c.get("base_image_seq_len", 256), c.get("max_image_seq_len", 4096),
                             c.get("base_shift", 0.5), c.get("max_shift", 1.15))
        retrieve_timesteps(sched, steps, self.device, sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
        return sched

    @torch.no_grad()
    def rollout(self, noise: torch.Tensor, text: dict, size: int, steps: int, stop: int,
                reference: torch.Tensor | None = None, guidance: float | None = None):
        """The policy's own sample, part way (ReFL): `stop` of `steps` Euler steps of FLUX's
        sampler from `noise` [B, N, 64] with the current LoRA, without gradients. Returns the
        tokens x_t there and its sigma t; sigma 1 and x_t = noise when stop is 0."""
        sched = self.scheduler(steps, noise.shape[1])
        x = noise
        for timestep in sched.timesteps[:stop]:
            v = self(x, (timestep / 1000).expand(len(x)), text, size, size, reference=reference, guidance=guidance)
            x = sched.step(v, timestep, x).prev_sample  # x + (sigma_next - sigma) v
        return x, sched.sigmas[stop].to(x)

    @property
    def peft(self):
        """The PeftModel, also when Ray Train wrapped it in DistributedDataParallel."""
        return getattr(self.transformer, "module", self.transformer)

    def blocks(self) -> list[torch.nn.Module]:
        base = self.peft.get_base_model() if hasattr(self.peft, "get_base_model") else self.peft
        return list(base.transformer_blocks) + list(base.single_transformer_blocks)

    @contextlib.contextmanager
    def reference_model(self):
        """The frozen reference of the DPO objectives: the adapter switched off, no gradients."""
        with self.peft.disable_adapter(), torch.no_grad():
            yield

    def lora_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.transformer.parameters() if p.requires_grad]

    def save_lora(self, directory) -> None:
        """A peft adapter directory (adapter_config.json + adapter_model.safetensors): peft's
        PeftModel.from_pretrained(FluxTransformer2DModel, directory) loads it; the same weights in
        diffusers' layout (pytorch_lora_weights.safetensors) for FluxPipeline.load_lora_weights."""
        from diffusers import FluxPipeline
        from peft import get_peft_model_state_dict

        self.peft.save_pretrained(directory)
        layers = {k.removeprefix("base_model.model."): v for k, v in get_peft_model_state_dict(self.peft).items()}
        FluxPipeline.save_lora_weights(directory, transformer_lora_layers=layers)


def _has_module(model: torch.nn.Module, suffix: str) -> bool:
    return any(name.endswith(suffix) for name, _ in model.named_modules())


@contextlib.contextmanager
def _capture(blocks, sink: list | None):
    """Forward hooks that append each block's image-token output to `sink`."""
    if sink is None:
        yield
        return
    handles = [b.register_forward_hook(lambda _m, _i, out: sink.append(out[1])) for b in blocks]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def to_tensor(images: list[np.ndarray], device: str = "cpu") -> torch.Tensor:
    """uint8 HxWx3 arrays of one size -> float [B, 3, H, W] in [0, 1]."""
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div(255).to(device)
