"""Equation tests of trainer/objectives.py and trainer/face_align.py against hand-computed values
(seed 000 eq. 1-10, seed 002 eq. 3-6 and 14, seed 003 eq. 1, seed 001 sec. 3.3)."""
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trainer.face_align import arcface_align, arcface_matrix, arcface_template
from trainer.objectives import (clip_grad, clipped_reward, composite_reward, dpo, focus_dpo, focus_map, iapo, id_loss, info_nce,
                                sft, sq_error, velocity_target, withanyone_loss, zscore)


def softplus(x):
    return math.log1p(math.exp(x))


def branches(b=2, n=6, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, n, c, generator=g) for _ in range(6)]  # v_w, v_w_ref, v_l, v_l_ref, target_w, target_l


# --- flow matching, squared errors ----------------------------------------------------------------

def test_velocity_target_is_the_time_derivative_of_the_interpolant():
    x0, noise = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 4.0]])
    assert torch.equal(velocity_target(x0, noise), torch.tensor([[-0.5, 6.0]]))
    xt = lambda t: (1 - t) * x0 + t * noise
    assert torch.allclose((xt(0.7) - xt(0.3)) / 0.4, velocity_target(x0, noise))


def test_sq_error_mean_and_where_the_weight_enters():
    pred = torch.tensor([[[1.0, 3.0], [2.0, 2.0]]])  # [1, 2 tokens, 2 channels]
    target = torch.zeros(1, 2, 2)
    assert sq_error(pred, target).tolist() == [(1 + 9 + 4 + 4) / 4]
    w = torch.tensor([[0.5, 0.0]])
    # eq. 10: the error is masked before squaring, a soft 0.5 counts 0.25
    assert sq_error(pred, target, w).tolist() == [0.25 * (1 + 9) / 4]
    # IAPO: a weight on the per-pixel loss
    assert sq_error(pred, target, w, on="loss").tolist() == [0.5 * (1 + 9) / 4]
    assert sq_error(pred, target, -torch.ones(1, 2), on="loss").tolist() == [-18 / 4]
    assert sq_error(pred, target, -torch.ones(1, 2)).tolist() == [18 / 4]
    assert sq_error(pred, target, torch.ones(1, 2)).tolist() == sq_error(pred, target).tolist()
    assert sq_error(pred.bfloat16(), target.bfloat16()).dtype == torch.float32


def test_sft_is_the_batch_mean_of_the_per_sample_mse():
    pred = torch.tensor([[[1.0], [1.0]], [[2.0], [0.0]]])
    assert sft(pred, torch.zeros(2, 2, 1)).item() == pytest.approx((1 + 2) / 2)
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert sft(pred, torch.zeros(2, 2, 1), weight).item() == pytest.approx((0.5 + 0) / 2)


# --- Diffusion-DPO, FocusDPO eq. 10, IAPO eq. 1 ---------------------------------------------------

def test_dpo_matches_a_hand_computed_two_sample_batch():
    err_w, err_w_ref = torch.tensor([0.5, 0.2]), torch.tensor([0.6, 0.1])
    err_l, err_l_ref = torch.tensor([0.4, 0.3]), torch.tensor([0.3, 0.3])
    loss, stats = dpo(err_w, err_w_ref, err_l, err_l_ref, beta=2.0)
    # sample 1: -2 ((0.5 - 0.6) - (0.4 - 0.3)) = 0.4; sample 2: -2 ((0.2 - 0.1) - 0) = -0.2
    # -log sigmoid(x) = log(1 + e^-x)
    assert loss.item() == pytest.approx((softplus(-0.4) + softplus(0.2)) / 2, abs=1e-6)
    assert loss.item() == pytest.approx(0.6555771, abs=1e-6)
    assert stats["accuracy"].item() == 0.5
    assert stats["margin"].item() == pytest.approx((0.4 - 0.2) / 2)
    assert stats["reward_w"].item() == pytest.approx((0.2 - 0.2) / 2, abs=1e-6)  # -2 (-0.1), -2 (0.1)
    assert stats["reward_l"].item() == pytest.approx((-0.2 + 0.0) / 2, abs=1e-6)


def test_dpo_gradient_lowers_the_winner_error_and_raises_the_loser_error():
    err_w, err_l = torch.tensor([0.5], requires_grad=True), torch.tensor([0.5], requires_grad=True)
    loss, _ = dpo(err_w, torch.tensor([0.5]), err_l, torch.tensor([0.5]), beta=1.0)
    loss.backward()
    assert loss.item() == pytest.approx(math.log(2))
    assert err_w.grad.item() == pytest.approx(0.5) and err_l.grad.item() == pytest.approx(-0.5)


def test_focus_dpo_with_an_all_ones_mask_is_dpo():
    v_w, v_w_ref, v_l, v_l_ref, t_w, t_l = branches()
    ref, ref_stats = dpo(sq_error(v_w, t_w), sq_error(v_w_ref, t_w), sq_error(v_l, t_l), sq_error(v_l_ref, t_l), 500.0)
    loss, stats = focus_dpo(v_w, v_w_ref, v_l, v_l_ref, t_w, t_l, torch.ones(2, 6), 500.0)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    assert stats["margin"].item() == pytest.approx(ref_stats["margin"].item(), rel=1e-5)
    assert stats["mask_mean"].item() == 1.0


def test_focus_dpo_masks_all_four_errors_with_the_same_mask():
    # one token is masked out: whatever the branches do there does not change the loss
    z = torch.zeros(1, 2, 1)
    v_w, v_w_ref = torch.tensor([[[1.0], [9.0]]]), torch.tensor([[[2.0], [-7.0]]])
    v_l, v_l_ref = torch.tensor([[[2.0], [5.0]]]), torch.tensor([[[1.0], [3.0]]])
    loss, _ = focus_dpo(v_w, v_w_ref, v_l, v_l_ref, z, z, torch.tensor([[1.0, 0.0]]), beta=1.0)
    # masked errors (mean over the 2 tokens): w 1/2, w_ref 4/2, l 4/2, l_ref 1/2
    inside = -1.0 * ((0.5 - 2.0) - (2.0 - 0.5))  # = 3
    assert loss.item() == pytest.approx(softplus(-inside), abs=1e-6)
    # an empty mask: log 2 and no gradient
    v_w.requires_grad_(True)
    loss, _ = focus_dpo(v_w, v_w_ref, v_l, v_l_ref, z, z, torch.zeros(1, 2), beta=1.0)
    loss.backward()
    assert loss.item() == pytest.approx(math.log(2)) and v_w.grad.abs().sum().item() == 0


def test_iapo_with_unit_weights_is_dpo_and_weights_enter_each_branch():
    v_w, v_w_ref, v_l, v_l_ref, t_w, t_l = branches(seed=1)
    ones = torch.ones(2, 6)
    ref, _ = dpo(sq_error(v_w, t_w), sq_error(v_w_ref, t_w), sq_error(v_l, t_l), sq_error(v_l_ref, t_l), 300.0)
    loss, _ = iapo(v_w, v_w_ref, v_l, v_l_ref, t_w, t_l, ones, ones, 300.0)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    # hand example: 2 tokens, 1 channel, loser's second token is a conflicting instance (w_neg)
    z = torch.zeros(1, 2, 1)
    v_w, v_w_ref = torch.tensor([[[1.0], [1.0]]]), torch.tensor([[[1.0], [2.0]]])
    v_l, v_l_ref = torch.tensor([[[1.0], [3.0]]]), torch.tensor([[[2.0], [1.0]]])
    w_w = torch.tensor([[1.0, 2.0]])  # w_pos = 2 on the winner's agreeing box
    for w_neg in (0.0, -1.0):
        w_l = torch.tensor([[1.0, w_neg]])
        loss, _ = iapo(v_w, v_w_ref, v_l, v_l_ref, z, z, w_w, w_l, beta=1.0)
        e_w, e_w_ref = (1 + 2 * 1) / 2, (1 + 2 * 4) / 2
        e_l, e_l_ref = (1 + w_neg * 9) / 2, (4 + w_neg * 1) / 2
        assert loss.item() == pytest.approx(softplus(((e_w - e_w_ref) - (e_l - e_l_ref))), abs=1e-6)


# --- FocusDPO's mask, eq. 2-6 and 9 ---------------------------------------------------------------

def unit(deg, norm=1.0):
    r = math.radians(deg)
    return [norm * math.cos(r), norm * math.sin(r)]


def test_m_s_removes_the_top_k_tokens_from_the_prior():
    # reference tokens pool to the direction 0 deg in both layers; target token angles per layer:
    # averaged cosines rank token 4 (outside the prior) > 0 > 1 > 2 > 3 > 5
    ref = torch.tensor([[unit(20), unit(-20)]])  # [1, R=2, d=2], mean at 0 deg
    layer1 = [0, 10, 20, 70, -5, 120]
    layer2 = [10, 10, 40, 80, 0, 100]  # token 0 averages cos 0 and cos 10: below token 4
    h_t = [torch.tensor([[unit(a, norm=1 + i) for i, a in enumerate(layer)]]) for layer in (layer1, layer2)]
    m_prior = torch.tensor([[1.0, 1, 1, 1, 0, 0]])  # K = 4 -> J = {4, 0, 1, 2}
    m_d = torch.tensor([[0.2, 0.4, 0.6, 0.8, 1.0, 0.5]])
    M, m_s, a = focus_map(h_t, [ref, ref], m_prior, m_d, tau=0.1, gamma=0.3)
    assert m_s.tolist() == [[0, 0, 0, 1, 0, 0]]  # the prior token that lost its top-K place
    assert a.tolist() == [0.25]
    assert M.tolist() == [[0, 0, 0, 1, 0, 0]]  # A_focus = 0.25 > tau: M = M_s


def test_focus_switch_just_above_and_just_below_tau():
    ref = torch.tensor([[unit(0)]])
    h_t = [torch.tensor([[unit(a) for a in (0, 5, 10, 80, 1)]])]  # token 4 (outside the prior) beats token 3
    m_prior = torch.tensor([[1.0, 1, 1, 1, 0]])  # K = 4: top-4 = {0, 4, 1, 2}
    m_d = torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.9]])
    _, m_s, a = focus_map(h_t, [ref], m_prior, m_d)
    assert m_s.tolist() == [[0, 0, 0, 1, 0]] and a.item() == 0.25
    M_above, _, _ = focus_map(h_t, [ref], m_prior, m_d, tau=0.2499, gamma=0.3)
    assert M_above.tolist() == [[0, 0, 0, 1, 0]]
    M_below, _, _ = focus_map(h_t, [ref], m_prior, m_d, tau=0.2501, gamma=0.3)
    # 0.3 M_s + 0.7 M_d ⊙ M_prior: [0.07, 0.14, 0.21, 0.3 + 0.28, 0 (outside the prior)]
    assert M_below[0].tolist() == pytest.approx([0.07, 0.14, 0.21, 0.58, 0.0], abs=1e-6)
    M_equal, _, _ = focus_map(h_t, [ref], m_prior, m_d, tau=0.25, gamma=0.3)  # eq. 9: A <= tau mixes
    assert torch.equal(M_equal, M_below)


def test_eq3_scores_by_cosine_not_by_squared_norm():
    # token 0 is nearly parallel to CLS but long; token 1 is at 45 deg and short. Cosine ranks 0
    # first; <c/|c|^2, h/|h|^2> = cos / (|c| |h|) would rank 1 first (0.995 / 10 vs 0.707 / 0.707).
    ref = torch.tensor([[unit(0)]])
    h_t = [torch.tensor([[[10.0, 1.0], [0.5, 0.5]]])]
    m_prior = torch.tensor([[1.0, 0.0]])  # K = 1
    _, m_s, a = focus_map(h_t, [ref], m_prior, torch.zeros(1, 2))
    assert m_s.tolist() == [[0, 0]] and a.item() == 0.0
    # and the ranking does not change when a layer's or a token's scale does
    _, m_s2, _ = focus_map([h_t[0] * torch.tensor([[[1e-3], [1e3]]])], [ref * 50], m_prior, torch.zeros(1, 2))
    assert torch.equal(m_s, m_s2)


def test_focus_map_per_sample_k_empty_prior_and_no_gradient():
    ref = torch.tensor([[unit(0)], [unit(0)]]).requires_grad_(True)
    h = torch.tensor([[unit(a) for a in (0, 30, 60, 90)]] * 2).requires_grad_(True)
    m_prior = torch.tensor([[1.0, 0, 1, 1], [0, 0, 0, 0]])  # K = 3 for sample 0, empty sample 1
    m_d = torch.full((2, 4), 0.5)
    M, m_s, a = focus_map([h], [ref], m_prior, m_d)
    # sample 0: top-3 = tokens 0, 1, 2 -> M_s = {3}, A = 1/3 > 0.1
    assert m_s[0].tolist() == [0, 0, 0, 1] and a[0].item() == pytest.approx(1 / 3) and M[0].tolist() == [0, 0, 0, 1]
    assert torch.isfinite(M).all() and torch.isfinite(a).all()
    assert a[1].item() == 0.0 and M[1].tolist() == [0, 0, 0, 0] and m_s[1].tolist() == [0, 0, 0, 0]
    assert not M.requires_grad and not a.requires_grad


# --- WithAnyone: ID loss, InfoNCE, total ----------------------------------------------------------

def test_id_loss_is_one_minus_cosine_averaged():
    g = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    t = torch.tensor([[2.0, 2.0], [0.0, 1.0]])
    assert id_loss(g, t).item() == pytest.approx(((1 - 1 / math.sqrt(2)) + 0.0) / 2)


def test_info_nce_is_cross_entropy_with_the_positive_as_class_0():
    g = torch.Generator().manual_seed(3)
    a, p, n = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g), torch.randn(4, 5, 8, generator=g)
    T = 0.07
    logits = torch.cat([F.cosine_similarity(a, p, dim=-1)[:, None],
                        F.cosine_similarity(a[:, None], n, dim=-1)], 1) / T
    expected = F.cross_entropy(logits, torch.zeros(4, dtype=torch.long))
    assert info_nce(a, p, n, T).item() == pytest.approx(expected.item(), rel=1e-5)
    # shared negatives [K, D] == the same negatives for every sample
    assert info_nce(a, p, n[0], T).item() == pytest.approx(info_nce(a, p, n[0].expand(4, 5, 8), T).item(), rel=1e-6)


def test_info_nce_by_hand_and_masked_negatives():
    a = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[2.0, 0.0]])  # cos 1
    n = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])  # cos 0, and a same-identity "negative" with cos 1
    # positive in the denominator: -log(e^2 / (e^2 + e^0)) = log(1 + e^-2)
    assert info_nce(a, p, n[:, :1], 0.5).item() == pytest.approx(softplus(-2.0), abs=1e-6)
    masked = info_nce(a, p, n, 0.5, negative_mask=torch.tensor([[True, False]]))
    assert masked.item() == pytest.approx(softplus(-2.0), abs=1e-6)
    assert info_nce(a, p, n, 0.5).item() == pytest.approx(math.log(1 + 1 + math.exp(-2)), abs=1e-6)


def test_withanyone_total_loss_weights():
    assert withanyone_loss(1.0, 2.0, 3.0) == pytest.approx(1.5)
    assert withanyone_loss(1.0, 2.0, 3.0, lambda_id=1.0, lambda_cl=0.0) == pytest.approx(3.0)


# --- GT-aligned ArcFace crop ----------------------------------------------------------------------

def similar_landmarks(scale=1.5, deg=20.0, shift=(70.3, 20.6)):
    """Landmarks that are an exact similarity image of the template, so the fit maps them exactly."""
    r = math.radians(deg)
    R = scale * np.array([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])
    return arcface_template() @ R.T + np.array(shift)


def dots(points, h, w, sigma):
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)  # pixel (i, j) centre at (x, y) = (j, i)
    img = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)) for x, y in points)
    return torch.tensor(img, dtype=torch.float32)


def test_gt_aligned_warp_puts_the_landmarks_on_the_arcface_template():
    lmk = similar_landmarks()
    img = dots(lmk, 256, 240, sigma=3.0).expand(3, -1, -1)[None].clone().requires_grad_(True)  # H 256, W 240
    crop = arcface_align(img, torch.tensor(lmk)[None], size=112)
    assert crop.shape == (1, 3, 112, 112)
    out = crop[0, 0].detach().numpy()
    yy, xx = np.mgrid[0:112, 0:112]
    for tx, ty in arcface_template():
        # centroid of the dot within 7 px of its brightest pixel near the template point
        win = (abs(xx - tx) < 8) & (abs(yy - ty) < 8)
        iy, ix = np.unravel_index(np.where(win, out, -1).argmax(), out.shape)
        near = ((xx - ix) ** 2 + (yy - iy) ** 2 <= 49) * out
        cx, cy = (near * xx).sum() / near.sum(), (near * yy).sum() / near.sum()
        assert abs(cx - tx) < 0.5 and abs(cy - ty) < 0.5
        assert math.hypot(cx - tx, cy - ty) < 0.1  # the convention is exact, not merely within 0.5 px
    # gradients reach the image; every crop pixel lies inside it, so the bilinear weights sum to 1
    crop.sum().backward()
    assert img.grad.sum().item() == pytest.approx(3 * 112 * 112, rel=1e-4)
    assert (img.grad[0, 0] > 0).sum() > 112 * 112 / 2


def test_warp_matches_insightface_norm_crop_and_estimate_norm():
    from insightface.utils.face_align import estimate_norm, norm_crop

    lmk = similar_landmarks(scale=1.3, deg=-15.0, shift=(40.7, 52.2)) + np.array(
        [[0.8, -0.4], [-0.6, 0.3], [0.2, 0.9], [-0.5, -0.7], [0.4, 0.2]])  # not exact: least squares
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        assert np.allclose(arcface_matrix(lmk), estimate_norm(lmk.astype(np.float32)), atol=1e-4)
    yy, xx = np.mgrid[0:200, 0:210].astype(np.float64)
    smooth = np.stack([128 + 100 * np.sin(xx / 9.0) * np.cos(yy / 13.0), 255 * xx / 210, 255 * yy / 200], -1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        expected = norm_crop(smooth.astype(np.float32), lmk.astype(np.float32))  # cv2.warpAffine, border 0
    got = arcface_align(torch.tensor(smooth, dtype=torch.float32).permute(2, 0, 1)[None], lmk[None])
    got = got[0].permute(1, 2, 0).numpy()
    assert (expected == 0).all(-1).any()  # the crop runs off the image: both pad with zeros
    assert np.abs(got - expected).max() < 0.05  # of 255


def test_degenerate_landmarks_are_refused():
    with pytest.raises(ValueError):
        arcface_align(torch.zeros(1, 3, 64, 64), np.zeros((1, 5, 2)))
    with pytest.raises(ValueError):
        arcface_align(torch.zeros(1, 3, 64, 64), np.full((1, 5, 2), np.nan))


# --- UPER: z-scored composite reward and the gradient clip ----------------------------------------

def test_zscore_and_the_composite_by_hand():
    text = torch.tensor([1.0, 1.0, 3.0, 3.0])  # mean 2, std 1 -> [-1, -1, 1, 1]
    aes = torch.tensor([0.0, 4.0, 0.0, 4.0])  # mean 2, std 2 -> [-1, 1, -1, 1]
    sub = torch.tensor([5.0, 5.0, 5.0, 9.0])  # mean 6, std sqrt(3) -> [-1, -1, -1, 3] / sqrt(3)
    assert zscore(text).tolist() == [-1, -1, 1, 1]
    r3 = 1 / math.sqrt(3)
    expected = [0.2 * t + 0.2 * a + 0.4 * s for t, a, s in
                zip([-1, -1, 1, 1], [-1, 1, -1, 1], [-r3, -r3, -r3, 3 * r3])]
    got = composite_reward({"text": text, "aes": aes, "sub": sub}, {"text": 0.2, "aes": 0.2, "sub": 0.4})
    assert got.tolist() == pytest.approx(expected, abs=1e-6)
    assert composite_reward({"text": text, "aes": aes, "sub": sub}).tolist() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError):
        composite_reward({"text": text}, {"text": 0.2, "sub": 0.4})


def test_zscore_gradient_and_the_degenerate_batches():
    x = torch.tensor([5.0, 5.0, 5.0, 9.0], requires_grad=True)
    (-composite_reward({"sub": x}, {"sub": 0.4}).mean()).backward()
    # batch statistics are constants: d/dx of -mean(0.4 (x - m) / s) = -0.4 / (s B), not 0
    assert x.grad.tolist() == pytest.approx([-0.4 / (math.sqrt(3) * 4)] * 4, rel=1e-5)
    one = torch.tensor([0.7], requires_grad=True)
    z = zscore(one)
    z.sum().backward()
    assert z.tolist() == [0.0] and one.grad.tolist() == [1.0]  # B = 1: centred, std taken as 1
    flat = torch.full((3,), 2.5, requires_grad=True)
    zf = zscore(flat)
    zf.sum().backward()
    assert zf.tolist() == [0.0, 0.0, 0.0] and flat.grad.tolist() == [1.0, 1.0, 1.0]


def test_clip_grad_clips_a_large_gradient_to_0_2_and_leaves_a_small_one():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], requires_grad=True)
    y = clip_grad(x, 0.2)
    assert torch.equal(y, x)
    (y * torch.tensor([[3.0, 4.0, 0.0], [0.01, 0.02, 0.0]])).sum().backward()
    assert x.grad[0].tolist() == pytest.approx([0.12, 0.16, 0.0])  # norm 5 -> 0.2
    assert x.grad[1].tolist() == pytest.approx([0.01, 0.02, 0.0])  # norm 0.022: untouched
    # per sample over all non-batch axes of an image batch
    img = torch.zeros(2, 3, 4, 4, requires_grad=True)
    (clip_grad(img) * torch.stack([torch.full((3, 4, 4), 1.0), torch.full((3, 4, 4), 1e-3)])).sum().backward()
    norms = img.grad.flatten(1).norm(dim=1)
    assert norms.tolist() == pytest.approx([0.2, 1e-3 * math.sqrt(48)], rel=1e-5)


def test_clipped_reward_clips_grad_of_the_reward_itself():
    """The clip applies to grad_I R (norm 5 -> 0.2), not to what arrives after the loss's factor."""
    image = torch.zeros(2, 3, 2, 2, requires_grad=True)
    c = torch.zeros(2, 3, 2, 2)
    c[0, 0, 0, :2] = torch.tensor([3.0, 4.0])  # |grad| = 5: clipped to 0.2
    c[1, 0, 0, :2] = torch.tensor([0.03, 0.04])  # |grad| = 0.05: kept
    x = image * 1.0  # a non-leaf, as the decoded image is
    reward = (x * c).flatten(1).sum(1) + torch.tensor([1.0, 2.0])
    r = clipped_reward(reward, x, 0.2)
    torch.testing.assert_close(r, reward.detach())
    (-10.0 * r.sum()).backward()
    torch.testing.assert_close(image.grad[0, 0, 0, :2], -10.0 * torch.tensor([0.12, 0.16]))
    torch.testing.assert_close(image.grad[1, 0, 0, :2], -10.0 * torch.tensor([0.03, 0.04]))


def test_zscore_over_gathered_rewards_and_a_window():
    from trainer.objectives import RewardStats

    stats = RewardStats(window=2)
    first = torch.tensor([0.0, 2.0])
    # the first step: only its own rewards, z = (x - 1) / 1
    assert composite_reward({"sub": first}, {"sub": 1.0}, stats).tolist() == pytest.approx([-1.0, 1.0])
    # the second: the window's [0, 2] and now [1, 3]: mean 1.5, std sqrt(1.25)
    got = composite_reward({"sub": torch.tensor([1.0, 3.0])}, {"sub": 1.0}, stats)
    assert got.tolist() == pytest.approx([-0.5 / 1.25 ** 0.5, 1.5 / 1.25 ** 0.5])
    # a micro-batch of 2 alone is always -1, +1; against the window [1, 3] it is not
    assert zscore(torch.tensor([5.0, 5.1])).tolist() == pytest.approx([-1.0, 1.0], abs=1e-4)
    ref = stats.reference("sub", torch.tensor([5.0, 5.1]))
    assert ref.tolist() == pytest.approx([1.0, 3.0, 5.0, 5.1])
    assert RewardStats(window=0).reference("sub", first).tolist() == [0.0, 2.0]


def _gather_rank(rank: int, path: str, out: str) -> None:
    import torch.distributed as dist

    from trainer.objectives import RewardStats

    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    rewards = torch.tensor([float(rank), float(rank) + 2.0])  # rank 0: [0, 2], rank 1: [1, 3]
    z = composite_reward({"sub": rewards}, {"sub": 1.0}, RewardStats(window=0))
    torch.save(z, f"{out}/{rank}.pt")
    dist.destroy_process_group()


def test_zscore_gathers_every_rank(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_gather_rank, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    z0, z1 = (torch.load(tmp_path / f"{r}.pt").tolist() for r in (0, 1))
    # over [0, 2, 1, 3]: mean 1.5, std sqrt(1.25), not each rank's own +-1
    s = 1.25 ** 0.5
    assert z0 == pytest.approx([-1.5 / s, 0.5 / s]) and z1 == pytest.approx([-0.5 / s, 1.5 / s])
