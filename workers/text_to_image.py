"""Text-to-image with FLUX.1 [dev] (diffusers FluxPipeline): the reference x_r and the winner x_w of
a DIP pair (FocusDPO sec. 4.1: "synthesizing reference and target pairs with the FLUX generator,
conditioned on identical subject prompts but with varied auxiliary attributes").

Two modes:
- `diptych` (default): one wide image of height H and width 2W shows the subject twice, side by
  side, and is split into the reference (left half) and the target (right half). This is the
  Subjects200K recipe: FLUX keeps a subject far more consistent inside one image than across two
  generations, so the pair starts out as a positive. The prompt column holds the diptych prompt.
- `independent`: one image per prompt, written to a single column.

Each row carries its own seed (a list of torch.Generator, one per sample), so a sample's initial
noise is the same whichever batch it lands in (the batched float math may still move a pixel by one
level); rows of different sizes in one batch are generated in groups by size.
"""
from __future__ import annotations

import pathlib

import numpy as np

from schemas.batch import Reject
from workers.base import Worker, text_of, torch_dtype

MODES = ("diptych", "independent")
# An image whose brightest channel value is below this is "all black": what fp16 overflow in the VAE
# or a NaN cast to uint8 produces, never a picture.
BLACK_MAX = 2.0 / 255.0


def generation_problem(image: np.ndarray) -> str | None:
    """Why a generated float image (HxWx3, [0, 1]) is unusable, or None. The check runs on the float
    output because a NaN turns into an ordinary-looking 0 once cast to uint8."""
    if not np.isfinite(image).all():
        return "nan_image"
    if image.size == 0 or float(image.max()) < BLACK_MAX:
        return "black_image"
    return None


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray((np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8))


def given(value):
    """None for an absent value: Ray hands a missing int in a numeric column over as NaN."""
    if value is None or (isinstance(value, (float, np.floating)) and np.isnan(value)):
        return None
    return value


def seed_of(row: dict, column: str) -> int:
    seed = given(row.get(column))
    if seed is None or isinstance(seed, (bool, np.bool_)):
        raise Reject("missing_seed", column)
    try:
        if float(seed) != int(seed):
            raise ValueError
        return int(seed)
    except (TypeError, ValueError, OverflowError):
        raise Reject("bad_seed", f"{column}: {seed!r}") from None


def size_of(row: dict, height: int, width: int, multiple: int) -> tuple[int, int]:
    """The row's own `height` / `width` where it has them, else the worker's. FLUX packs 2x2 latent
    patches of an 8x VAE, so a side must be a multiple of 16; other sizes would be silently resized
    by the pipeline and no longer match what the manifest says."""
    h = height if given(row.get("height")) is None else row["height"]
    w = width if given(row.get("width")) is None else row["width"]
    try:
        h, w = int(h), int(w)
    except (TypeError, ValueError):
        raise Reject("bad_size", f"{h!r}x{w!r}") from None
    if h < multiple or w < multiple or h % multiple or w % multiple:
        raise Reject("bad_size", f"{h}x{w} is not a positive multiple of {multiple}")
    return h, w


def generators(seeds: list[int]):
    """One CPU generator per sample: the initial noise then depends on the seed alone, not on the
    batch it shares or on the device (diffusers draws CPU noise and moves it)."""
    import torch

    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def groups_by_size(inputs: list[dict]) -> dict[tuple[int, int], list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for i, x in enumerate(inputs):
        groups.setdefault((x["height"], x["width"]), []).append(i)
    return groups


class TextToImage(Worker):
    """FLUX.1 [dev] text-to-image.

    in:  `prompt_column` (str), `seed_column` (int), optional `height` / `width` (int, multiples of 16)
    out: diptych mode: `ref_column`, `win_column` (uint8 HxWx3, the left and right halves);
         independent mode: `output_column` (uint8 HxWx3).
    rejects: empty_prompt, missing_seed, bad_seed, bad_size, nan_image, black_image, model_error.
    """

    role = "text_to_image"

    def __init__(self, model: str, *, stage: str | None = None, dtype: str = "bfloat16",
                 device: str | None = None, mode: str = "diptych", prompt_column: str = "prompt",
                 seed_column: str = "seed", ref_column: str = "ref", win_column: str = "win",
                 output_column: str = "image", height: int = 1024, width: int = 1024,
                 steps: int = 28, guidance: float = 3.5, max_sequence_length: int = 512):
        super().__init__(model, stage=stage, dtype=dtype, device=device)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        from diffusers import FluxPipeline

        self.mode = mode
        self.prompt_column, self.seed_column = prompt_column, seed_column
        self.ref_column, self.win_column, self.output_column = ref_column, win_column, output_column
        self.height, self.width = height, width
        self.steps, self.guidance, self.max_sequence_length = steps, guidance, max_sequence_length
        self.pipe = FluxPipeline.from_pretrained(model, dtype=torch_dtype(dtype, self.device)).to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.multiple = self.pipe.vae_scale_factor * 2

    def check(self, row: dict) -> dict:
        prompt, seed = text_of(row, self.prompt_column), seed_of(row, self.seed_column)
        height, width = size_of(row, self.height, self.width, self.multiple)
        if self.mode == "diptych":
            width *= 2  # reference and target side by side in one canvas
        return {"prompt": prompt, "seed": seed, "height": height, "width": width}

    def predict(self, inputs: list[dict]) -> list[dict]:
        import torch

        out: list = [None] * len(inputs)
        for (height, width), idx in groups_by_size(inputs).items():
            with torch.inference_mode():
                images = self.pipe(
                    prompt=[inputs[i]["prompt"] for i in idx],
                    height=height, width=width, num_inference_steps=self.steps,
                    guidance_scale=self.guidance, max_sequence_length=self.max_sequence_length,
                    generator=generators([inputs[i]["seed"] for i in idx]), output_type="np",
                ).images
            for i, image in zip(idx, images):
                out[i] = self._outputs(np.asarray(image, dtype=np.float32))
        return out

    def _outputs(self, image: np.ndarray):
        if self.mode == "independent":
            problem = generation_problem(image)
            return Reject(problem, "generated image") if problem else {self.output_column: to_uint8(image)}
        half = image.shape[1] // 2
        ref, win = image[:, :half], image[:, half:]
        for name, part in (("ref", ref), ("win", win)):
            problem = generation_problem(part)
            if problem:
                return Reject(problem, f"{name} half of the diptych")
        return {self.ref_column: to_uint8(ref), self.win_column: to_uint8(win)}


# ------------------------------------------------------------------------------------------------
# tiny random-weight FLUX for the `tiny` profile and tests

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
    built on `device` (a GPU: see workers.tiny.random_init) and saved like build_tiny."""
    from diffusers import FluxPipeline

    from workers.tiny import random_init

    directory = pathlib.Path(directory)
    with random_init(seed, device):
        pipe = FluxPipeline(transformer=full_flux_transformer(), **full_flux_parts())
    pipe.save_pretrained(directory)
    return directory
