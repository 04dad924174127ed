"""The trainer's R_sub (trainer/rewards.py) is the data pipeline's (stages/subject_reward.py): the
same components, weights and app. B.1 penalty, on tensors and differentiable."""
import numpy as np
import pytest
import torch

from stages.subject_reward import subject_reward


@pytest.fixture(scope="module")
def dinov2(tmp_path_factory):
    import workers  # noqa: F401
    from runtime.roles import ensure

    return str(ensure(tmp_path_factory.mktemp("models"), ["image_encoder"])["image_encoder"])


def test_penalty_above_the_copy_paste_similarity(dinov2):
    from trainer.rewards import SubjectReward

    reward = SubjectReward(dinov2, size=448, device="cpu")
    image = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    # a copy: every patch cosine is 1, so s = 1 and the penalty 2 * (1 - 0.95) = 0.1
    np.testing.assert_allclose(reward(image, image.clone()).detach().numpy(), [0.9], atol=1e-5)
    assert SubjectReward(dinov2, copy_paste_similarity=None)(image, image.clone()).item() == pytest.approx(1.0, abs=1e-5)


def test_the_same_number_as_the_pipeline(dinov2):
    from trainer.rewards import SubjectReward

    g = torch.Generator().manual_seed(1)
    gen, ref = torch.rand(2, 3, 448, 448, generator=g), torch.rand(2, 3, 448, 448, generator=g)
    gen.requires_grad_(True)
    for weights in ({"patch": 1.0}, {"patch": 0.5, "cls": 0.5}):
        reward = SubjectReward(dinov2, weights=weights, copy_paste_similarity=0.2, copy_paste_penalty=2.0)
        parts = {k: v.detach().numpy() for k, v in reward.cosines(gen, ref).items()}
        got = reward(gen, ref)
        for i in range(2):
            # the pipeline's rule on the same cosines: [whole image, grid patches]
            cos = [parts.get("cls", parts["patch"])[i]] + [parts["patch"][i]] * 9
            want = subject_reward(cos, 9, weights=weights, copy_paste_similarity=0.2, copy_paste_penalty=2.0)
            assert got[i].item() == pytest.approx(want["r_sub"], abs=1e-5)
            assert want["r_sub_penalty"] > 0  # the penalty is live in this case
        (grad,) = torch.autograd.grad(got.sum(), gen)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    with pytest.raises(ValueError, match="no random crops"):
        SubjectReward(dinov2, weights={"patch": 1.0, "crops": 0.5})
