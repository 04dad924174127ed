"""Random-weight FLUX.1 [dev] pipelines, loadable by workers.text_to_image.TextToImage: at toy size
for the `tiny` profile and tests (build_tiny), at production size for GPU throughput benchmarks
(build_full). The parts, transformers and locally built tokenizers are shared with
builders.inpainting (FLUX.1 Fill [dev]).
"""
from __future__ import annotations

import pathlib

# FLUX.1's VAE normalisation (black-forest-labs/FLUX.1-dev vae/config.json).
FLUX_VAE_SCALING = 0.3611
FLUX_VAE_SHIFT = 0.1159
# FLUX.1-dev scheduler/scheduler_config.json: resolution-dependent shift of the flow-matching sigmas.
FLUX_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                      max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
TINY_WORDS = ("a photo of the same subject two side by side images left right dog cat toy cup "
              "in on with red blue green white background beach room table").split()


def flux_tokenizers() -> tuple:
    """Locally built stand-ins for FLUX's CLIP and T5 tokenizers (no hub): a byte-level CLIP BPE
    with no merges, so every word is spelled out byte by byte, and a T5 unigram vocabulary of a
    few words and the single characters, as sentencepiece has."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer, T5Tokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    clip_vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in alphabet:
        clip_vocab.setdefault(ch, len(clip_vocab))
        clip_vocab.setdefault(ch + "</w>", len(clip_vocab))
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [("▁" + w, -3.0) for w in TINY_WORDS]
    pieces += [(c, -6.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789.,;:'-"]
    return (CLIPTokenizer(vocab=clip_vocab, merges=[], model_max_length=77),
            T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512))


def tiny_flux_parts(seed: int = 0) -> dict:
    """The components FLUX.1 [dev] and FLUX.1 Fill [dev] share, at toy size: CLIP-L-style and
    T5-style text encoders with locally built tokenizers, a 16-channel VAE with the same 8x
    downsampling (four blocks) and latent normalisation, and the flow-matching scheduler."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tokenizer, tokenizer_2 = flux_tokenizers()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77, projection_dim=32, hidden_act="quick_gelu",
        bos_token_id=0, eos_token_id=1, pad_token_id=1))
    torch.manual_seed(seed + 1)
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))

    torch.manual_seed(seed + 2)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, layers_per_block=1, norm_num_groups=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16), sample_size=64, use_quant_conv=False, use_post_quant_conv=False,
        scaling_factor=FLUX_VAE_SCALING, shift_factor=FLUX_VAE_SHIFT)
    return {"scheduler": FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER), "vae": vae,
            "text_encoder": text_encoder, "tokenizer": tokenizer,
            "text_encoder_2": text_encoder_2, "tokenizer_2": tokenizer_2}


def tiny_flux_transformer(seed: int, in_channels: int = 64, out_channels: int | None = None):
    """FluxTransformer2DModel at toy size: one double-stream and one single-stream block, 2 heads of
    16 (rope axes 4 + 6 + 6 = 16), text width 32 to match the tiny T5, pooled width 32 to match the
    tiny CLIP, guidance embedding as in the [dev] models."""
    import torch
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(seed + 3)
    return FluxTransformer2DModel(
        patch_size=1, in_channels=in_channels, out_channels=out_channels, num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        guidance_embeds=True, axes_dims_rope=(4, 6, 6))


def build_tiny(directory, seed: int = 0) -> pathlib.Path:
    """A random-weight FLUX.1 [dev] pipeline saved with save_pretrained (model_index.json and one
    subfolder per component), loadable by `TextToImage(model=directory)`."""
    from diffusers import FluxPipeline

    directory = pathlib.Path(directory)
    pipe = FluxPipeline(transformer=tiny_flux_transformer(seed), **tiny_flux_parts(seed))
    pipe.save_pretrained(directory)
    return directory


# ------------------------------------------------------------------------------------------------
# production-size random-weight FLUX for GPU throughput benchmarks (benchmarks/workers.py --gpu)

def full_flux_transformer(in_channels: int = 64, out_channels: int | None = None):
    """FLUX.1 [dev]'s transformer: diffusers' FluxTransformer2DModel defaults already are FLUX.1's
    size (19 double-stream and 38 single-stream blocks, 24 heads of 128, T5-XXL text width 4096,
    CLIP-L pooled width 768, rope axes 16 + 56 + 56); [dev] adds the guidance embedding.
    11.9B parameters."""
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(in_channels=in_channels, out_channels=out_channels, guidance_embeds=True)


def full_flux_parts() -> dict:
    """FLUX.1 [dev]'s other components at their real sizes (black-forest-labs/FLUX.1-dev's
    text_encoder, text_encoder_2 and vae config.json): CLIP ViT-L/14's text tower (123M), the T5
    v1.1 XXL encoder (4.76B) and the 16-channel VAE (84M). The tokenizers are the local stand-ins:
    FluxPipeline pads every prompt to 77 CLIP and max_sequence_length T5 tokens, so the model work
    does not depend on the vocabulary."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    tokenizer, tokenizer_2 = flux_tokenizers()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu", bos_token_id=0, eos_token_id=1,
        pad_token_id=1))
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
        feed_forward_proj="gated-gelu", is_encoder_decoder=False, pad_token_id=0, eos_token_id=1,
        decoder_start_token_id=0))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2, norm_num_groups=32,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512), sample_size=1024, use_quant_conv=False, use_post_quant_conv=False,
        scaling_factor=FLUX_VAE_SCALING, shift_factor=FLUX_VAE_SHIFT)
    return {"scheduler": FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER), "vae": vae,
            "text_encoder": text_encoder, "tokenizer": tokenizer,
            "text_encoder_2": text_encoder_2, "tokenizer_2": tokenizer_2}


def build_full(directory, seed: int = 0, device: str | None = None) -> pathlib.Path:
    """FLUX.1 [dev] at production size with random weights (~16.9B parameters, ~34 GB in bf16),
    built on `device` (a GPU: see builders.random_init) and saved like build_tiny."""
    from diffusers import FluxPipeline

    from builders import random_init

    directory = pathlib.Path(directory)
    with random_init(seed, device):
        pipe = FluxPipeline(transformer=full_flux_transformer(), **full_flux_parts())
    pipe.save_pretrained(directory)
    return directory
