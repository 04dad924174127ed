"""Random-weight FLUX.1 Fill [dev] pipelines, loadable by workers.inpainting.Inpainting: toy size
(build_tiny) and production size (build_full), from builders.text_to_image's FLUX parts.
"""
from __future__ import annotations

import pathlib

from builders.text_to_image import full_flux_parts, full_flux_transformer, tiny_flux_parts, tiny_flux_transformer


def build_tiny(directory, seed: int = 0) -> pathlib.Path:
    """A random-weight FLUX.1 Fill [dev] pipeline saved with save_pretrained, loadable by
    `Inpainting(model=directory)`. The Fill transformer reads the noisy latents (16 ch x 2x2 = 64),
    the masked-image latents (64) and the 8x8 pixel mask folded into each latent cell and packed
    2x2 (8 * 8 * 4 = 256): 384 channels in, 64 out."""
    from diffusers import FluxFillPipeline

    directory = pathlib.Path(directory)
    parts = tiny_flux_parts(seed)
    vae_scale = 2 ** (len(parts["vae"].config.block_out_channels) - 1)
    in_channels = 64 + 64 + vae_scale * vae_scale * 4
    pipe = FluxFillPipeline(transformer=tiny_flux_transformer(seed, in_channels=in_channels, out_channels=64), **parts)
    pipe.save_pretrained(directory)
    return directory


# FLUX.1 Fill [dev]'s transformer input: noisy latents (64) + masked-image latents (64) + the 8x8
# pixel mask of each latent cell packed 2x2 (8 * 8 * 4 = 256), as build_tiny derives it
FILL_IN_CHANNELS = 64 + 64 + 8 * 8 * 4


def build_full(directory, seed: int = 0, device: str | None = None) -> pathlib.Path:
    """FLUX.1 Fill [dev] at production size with random weights: FLUX.1's transformer with 384
    input channels (11.9B) and FLUX.1 [dev]'s text encoders and VAE; see
    builders.text_to_image.build_full."""
    from diffusers import FluxFillPipeline

    from builders import random_init

    directory = pathlib.Path(directory)
    with random_init(seed, device):
        pipe = FluxFillPipeline(transformer=full_flux_transformer(FILL_IN_CHANNELS, out_channels=64),
                                **full_flux_parts())
    pipe.save_pretrained(directory)
    return directory
