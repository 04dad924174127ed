"""UPER's ReFL (seed 001, Alg. 1 lines 13-19) on the tiny random-weight FLUX: the rollout is
FLUX's own sampler run by the current LoRA, the reward's gradient reaches the LoRA through the last
step only, and the RL data is prompts and references (UPER or DIP, no target). R_aes is HPSv2
loaded by open_clip."""
import numpy as np
import pytest
import torch

from tests.conftest import ROOT

MODELS = ROOT / "out" / "tiny-models"


@pytest.fixture(scope="module")
def flux():
    """The tiny FLUX with a LoRA whose B is not zero, so the policy is not the base model."""
    import trainer.rewards  # noqa: F401  (declares the clip and hps roles)
    import workers  # noqa: F401
    from runtime.roles import ensure
    from trainer.model import SubjectFlux

    ensure(MODELS, ["text_to_image", "clip", "hps", "image_encoder"])
    model = SubjectFlux(str(MODELS / "text_to_image"), lora_rank=4)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.transformer.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return model


def test_rollout_is_fluxs_sampler_run_by_the_current_lora(flux):
    from trainer.model import SubjectFlux

    size, steps, stop = 64, 6, 4
    tokens = (size // 16) ** 2
    text = flux.encode_text(["a red teapot"])
    noise = torch.randn(1, tokens, flux.channels, generator=torch.Generator().manual_seed(0))
    xt, sigma = flux.rollout(noise, text, size, steps, stop, guidance=3.5)

    # the schedule by hand: FluxPipeline's sigmas 1 .. 1/steps, exponentially time-shifted by
    # mu = m * tokens + b, the line through (256, 0.5) and (4096, 1.15)
    m = (1.15 - 0.5) / (4096 - 256)
    mu = m * tokens + (0.5 - m * 256)
    s = np.linspace(1.0, 1 / steps, steps)
    shifted = np.exp(mu) / (np.exp(mu) + (1 / s - 1))
    sched = flux.scheduler(steps, tokens)
    np.testing.assert_allclose(sched.sigmas[:-1].numpy(), shifted, rtol=1e-5)
    assert float(sigma) == pytest.approx(shifted[stop], rel=1e-5)

    # the Euler steps by hand, x <- x + (sigma_next - sigma) v(x, sigma), with the LoRA on
    x = noise
    sig = list(shifted) + [0.0]
    with torch.no_grad():
        for i in range(stop):
            v = flux(x, torch.tensor([sig[i]], dtype=torch.float32), text, size, size, guidance=3.5)
            x = x + (sig[i + 1] - sig[i]) * v
        torch.testing.assert_close(xt, x, atol=1e-5, rtol=1e-4)
        with flux.reference_model():  # the base model's sample is another: the rollout is the policy's
            base, _ = SubjectFlux.rollout(flux, noise, text, size, steps, stop, guidance=3.5)
    assert (base - xt).abs().max() > 1e-3
    assert flux.rollout(noise, text, size, steps, 0)[0] is noise  # stop 0: pure noise at sigma 1


@pytest.fixture(scope="module")
def losses(flux):
    from configs import TrainConfig
    from trainer.loop import Losses
    from trainer.rewards import HPSReward, SubjectReward, TextReward

    cfg = TrainConfig(objective="refl", resolution=64, refl_steps=5, refl_stop=(2, 4), reward_window=0)
    rewards = {"text": TextReward(str(MODELS / "clip")), "aesthetic": HPSReward(str(MODELS / "hps")),
               "subject": SubjectReward(str(MODELS / "image_encoder"))}
    return Losses(flux, cfg, rewards=rewards)


def batch(n: int = 2) -> dict:
    rng = np.random.default_rng(0)
    return {"prompt": ["a red teapot", "a dog on a sofa"][:n],
            "ref": rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)}


def test_the_reward_gradient_reaches_the_lora_through_the_last_step_only(flux, losses):
    """Every rollout forward runs without gradients; the one forward with gradients takes an x_t
    that carries none (so nothing flows back into the rollout), and the LoRA gets a gradient."""
    calls = []

    def record(_module, _args, kwargs):
        calls.append((torch.is_grad_enabled(), kwargs["hidden_states"].requires_grad))

    handle = flux.peft.register_forward_pre_hook(record, with_kwargs=True)
    try:
        flux.transformer.zero_grad(set_to_none=True)
        loss, stats = losses.refl(batch(), torch.Generator().manual_seed(3))
        loss.backward()
    finally:
        handle.remove()
    stop = stats["refl_stop"]
    assert 2 <= stop <= 4
    assert calls == [(False, False)] * stop + [(True, False)]
    grads = [p.grad for p in flux.lora_parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    assert all(-1 <= float(stats[f"reward_{k}"]) <= 1 for k in ("text", "aesthetic", "subject"))


def test_the_stop_step_is_drawn_over_the_configured_range(losses):
    with torch.no_grad():
        stops = {losses.refl(batch(1), torch.Generator().manual_seed(s))[1]["refl_stop"] for s in range(12)}
    assert stops == {2, 3, 4}


def test_without_gradients_the_loss_is_the_raw_weighted_reward_and_the_window_is_left_alone(losses):
    """The fixed-batch check: minus sum_k w_k mean R_k (z-scores of one evaluation are
    meaningless), and RewardStats' history is not fed by it."""
    losses.reward_stats.window = 8
    losses.reward_stats.history.clear()
    with torch.no_grad():
        loss, stats = losses.refl(batch(), torch.Generator().manual_seed(5))
    w = losses.cfg.reward_weights
    expected = -sum(w[k] * float(stats[f"reward_{k}"]) for k in w)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert losses.reward_stats.history == {}
    losses.reward_stats.window = 0


def test_hps_reward_is_open_clips_cosine_of_image_and_prompt():
    """HPSReward loads the tiny HPSv2 through open_clip (its local-dir format, HPSv2's
    {"state_dict": ...} checkpoint); the score is the cosine of open_clip's normalised features,
    by hand here."""
    import open_clip

    from trainer.rewards import HPSReward

    reward = HPSReward(str(MODELS / "hps"))
    saved = torch.load(MODELS / "hps" / "open_clip_pytorch_model.bin", weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in reward.model.state_dict().items())
    images = torch.rand(2, 3, 48, 48)
    prompts = ["a red teapot", "a dog on a sofa"]
    model = reward.model
    x = torch.nn.functional.interpolate(images, size=(32, 32), mode="bilinear", antialias=True)
    x = (x - torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        f_img, f_txt = model.encode_image(x), model.encode_text(open_clip.tokenize(prompts))
        by_hand = (f_img / f_img.norm(dim=-1, keepdim=True) * f_txt / f_txt.norm(dim=-1, keepdim=True)).sum(-1)
        torch.testing.assert_close(reward(images, prompts), by_hand, atol=1e-5, rtol=1e-5)
