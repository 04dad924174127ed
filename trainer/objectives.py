"""The training objectives of the four papers, as pure torch functions on tensors (no model, no I/O).

Flow-matching convention (FLUX / rectified flow): x_t = (1 - t) x0 + t noise and the model predicts
the velocity v = noise - x0, so the "noise error" ||eps - eps_theta||^2 of Diffusion-DPO becomes the
velocity error ||v_target - v_theta||^2 everywhere below. Latents are FLUX's packed tokens [B, N, C];
masks and weight maps are on the same token grid, [B, N].

- Diffusion-DPO (seed 000, eq. 1), FocusDPO's subject mask and focus switch (seed 000, eq. 2-6, 9,
  Alg. 1) and its masked loss (eq. 10), IAPO's instance weights (seed 003, eq. 1).
- WithAnyone's flow-matching loss, GT-aligned ID loss, InfoNCE and total (seed 002, eq. 3-6); the
  GT-landmark alignment itself is in trainer/face_align.py.
- UPER's ReFL composite reward with batch z-scores and the subject-reward gradient clip (seed 001,
  sec. 3.3).

Errors are computed in float32 whatever the input dtype: DPO differences of nearly equal errors
(policy vs. frozen reference) vanish in bf16.
"""
from __future__ import annotations

from collections import deque

import torch
import torch.nn.functional as F

from trainer.face_align import arcface_align  # noqa: F401  (re-exported: the ID loss's input)

TAU = 0.1  # seed 000, sec. 4.2 / app. A.3: focus threshold
GAMMA = 0.3  # seed 000: fusion coefficient of M_s and M_d
LAMBDA_ID = 0.1  # seed 002, eq. 6: "Both are set to 0.1"
LAMBDA_CL = 0.1
UPER_WEIGHTS = {"text": 0.2, "aes": 0.2, "sub": 0.4}  # seed 001, sec. 3.3
UPER_CLIP = 0.2  # seed 001, sec. 3.3: tau of the subject reward's gradient w.r.t. the image


# --- flow matching -------------------------------------------------------------------------------

def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """d x_t / dt for x_t = (1 - t) x0 + t noise: the rectified-flow regression target (seed 002, eq. 3,
    written there with data at t = 1; FLUX's scheduler puts noise at t = 1, hence the sign)."""
    return noise - x0


def sq_error(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, *,
             on: str = "error") -> torch.Tensor:
    """Per-sample mean over all non-batch elements of the squared velocity error -> [B] (float32).

    weight [B, N] (or already broadcastable to pred) is broadcast over the channels, and enters
    - on="error": ((pred - target) * w)^2. Seed 000 eq. 10 masks the error before the squared norm,
      ||(eps - eps_theta) ⊙ M||^2, so a soft M counts squared. FocusDPO.
    - on="loss": w * (pred - target)^2, a weight on the per-pixel loss. IAPO (seed 003): its w_neg = -1
      run "receives opposing gradient signals within the same image", which only happens if the
      weight multiplies the loss; with the default binary weights (w_pos = 1, w_neg = 0) both agree.

    Mean, not the equations' sum: the two differ by the constant N * C, which beta absorbs, and the
    mean is what the Diffusion-DPO reference code uses, so beta keeps its usual scale; and because
    the masked error is averaged over the same N * C elements as the plain one (not renormalised by
    the mask area, which eq. 10 does not do), M = 1 gives exactly the unmasked error and
    focus_dpo(M = 1) == dpo.
    """
    err = pred.float() - target.float()
    if weight is not None:
        w = weight.float()
        if w.dim() == err.dim() - 1:
            w = w.unsqueeze(-1)  # [B, N] -> [B, N, 1]: the same weight on every channel of a token
        if on == "error":
            err = err * w
        elif on == "loss":
            return (w * err.square()).flatten(1).mean(1)
        else:
            raise ValueError(f"on must be 'error' or 'loss', got {on!r}")
    return err.square().flatten(1).mean(1)


def sft(v_pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Flow-matching MSE (seed 002, eq. 3 L_diff; UPER's SFT stage), averaged over the batch."""
    return sq_error(v_pred, target, weight).mean()


# --- preference objectives -------------------------------------------------------------------------

def dpo(err_w: torch.Tensor, err_w_ref: torch.Tensor, err_l: torch.Tensor, err_l_ref: torch.Tensor,
        beta: float) -> tuple[torch.Tensor, dict]:
    """Diffusion-DPO (seed 000, eq. 1) on per-sample errors [B] of the policy and the frozen reference:

        L = -mean_b log sigmoid(-beta ((err_w - err_w_ref) - (err_l - err_l_ref))).

    beta stands for the paper's beta T omega(lambda_t) (the timestep weighting is a constant per step
    under a uniform t, so it is folded in). The Diffusion-DPO reference code writes -0.5 * beta_dpo,
    so its beta_dpo (and IAPO's 2000-5000) is 2 x ours.

    stats (detached): implicit reward of each branch r = -beta (err - err_ref) averaged over the
    batch, their margin, the implicit accuracy (share of samples with r_w > r_l), and the policy's
    raw errors.
    """
    reward_w = -beta * (err_w.float() - err_w_ref.float())
    reward_l = -beta * (err_l.float() - err_l_ref.float())
    margin = reward_w - reward_l  # the argument of the sigmoid
    loss = -F.logsigmoid(margin).mean()
    stats = {"reward_w": reward_w.detach().mean(), "reward_l": reward_l.detach().mean(),
             "margin": margin.detach().mean(), "accuracy": (margin.detach() > 0).float().mean(),
             "err_w": err_w.detach().float().mean(), "err_l": err_l.detach().float().mean()}
    return loss, stats


def focus_dpo(v_w, v_w_ref, v_l, v_l_ref, target_w, target_l, M: torch.Tensor, beta: float
              ) -> tuple[torch.Tensor, dict]:
    """FocusDPO (seed 000, eq. 10): eq. 1 with every velocity error masked by the fusion mask M [B, N]
    of focus_map, the same M on winner and loser as the equation writes (it is computed from the
    winner, Alg. 1 line 9). A sample whose M is all zero contributes log 2 and no gradient.
    stats: dpo's plus the mean of M."""
    M = M.detach()
    loss, stats = dpo(sq_error(v_w, target_w, M), sq_error(v_w_ref, target_w, M),
                      sq_error(v_l, target_l, M), sq_error(v_l_ref, target_l, M), beta)
    stats["mask_mean"] = M.float().mean()
    return loss, stats


def iapo(v_w, v_w_ref, v_l, v_l_ref, target_w, target_l, weight_w: torch.Tensor, weight_l: torch.Tensor,
         beta: float) -> tuple[torch.Tensor, dict]:
    """IAPO (seed 003, eq. 1): Diffusion-DPO with the instance weight map M* of each image on its own
    branch (weight_w on the winner's policy and reference errors, weight_l on the loser's): w_pos on
    boxes whose instance preference agrees with the global label, w_neg where it conflicts, 1
    elsewhere. The weight multiplies the per-pixel loss (sq_error on="loss", see there)."""
    weight_w, weight_l = weight_w.detach(), weight_l.detach()
    return dpo(sq_error(v_w, target_w, weight_w, on="loss"), sq_error(v_w_ref, target_w, weight_w, on="loss"),
               sq_error(v_l, target_l, weight_l, on="loss"), sq_error(v_l_ref, target_l, weight_l, on="loss"),
               beta)


@torch.no_grad()
def focus_map(h_target: list[torch.Tensor], h_ref: list[torch.Tensor], m_prior: torch.Tensor,
              m_d: torch.Tensor, tau: float = TAU, gamma: float = GAMMA
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """FocusDPO's fusion mask (seed 000, eq. 2-6 and 9, Alg. 1 lines 9-11) -> (M, M_s, A_focus).

    h_target / h_ref: per multi-modal attention layer, the hidden states of the noisy target's tokens
    [B, P, d] and of the reference's tokens [B, R, d] (eq. 2). m_prior: the subject mask on the target
    token grid [B, P]; m_d: the complexity map of eq. 7-8 on the same grid [B, P].

    - eq. 3: CLS^i = pool(H_r^i), the mean of the reference tokens. The printed normalisation
      <CLS/|CLS|^2, H/|H|^2> is read as L2 normalisation (||.||_2, its subscript set as a power), so
      S is the cosine of CLS with each target token averaged over the N layers. Dividing by the
      squared norm instead would make the score cos / (|CLS| |H_j|), ranking small-norm tokens above
      well-aligned ones and letting the layers with the smallest hidden-state norms dominate the
      average; the cosine is scale-free per token and per layer.
    - eq. 4-5: J = the K highest S over all target tokens, K = "the number of tokens of reference
      image x_r in x_t" = |M_prior|_1 rounded, per sample; M' = 1 on J.
    - eq. 6: M_s = M_prior \\ M' = M_prior ⊙ (1 - M'): the subject tokens that did NOT win a top-K
      place, i.e. where the prediction does not yet correspond to the reference.
    - Alg. 1 line 10: A_focus = |M_s|_1 / |M_prior|_1. An empty M_prior has K = 0 and M_s = 0; we set
      A_focus = 0 there (nothing of the subject is unmatched), and M = 0 in either branch of eq. 9.
    - eq. 9: M = M_s if A_focus > tau, else gamma M_s + (1 - gamma) M_d ⊙ M_prior. Eq. 9, not the
      appendix's eq. 11 (no ⊙ M_prior): eq. 11 is the ablation "Configuration III, w/o M_prior"
      (app. A.2), which the full method beats; with M_prior the mask stays inside the subject.

    No gradient flows: the mask weights the loss, it is not a path to the hidden states.
    """
    if not h_target or len(h_target) != len(h_ref):
        raise ValueError(f"need the same nonzero number of target and reference layers, got "
                         f"{len(h_target)} and {len(h_ref)}")
    m_prior = m_prior.float()
    s = torch.zeros_like(m_prior)
    for ht, hr in zip(h_target, h_ref):  # eq. 3
        cls = F.normalize(hr.float().mean(1), dim=-1)  # [B, d]
        s += torch.einsum("bd,bpd->bp", cls, F.normalize(ht.float(), dim=-1))
    s /= len(h_target)
    k = m_prior.sum(1).round().long()  # eq. 4: K per sample
    order = torch.argsort(s, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(s.shape[1], device=s.device).expand_as(order))
    m_top = (rank < k[:, None]).float()  # eq. 5: M'
    m_s = m_prior * (1 - m_top)  # eq. 6
    prior_area = m_prior.sum(1)
    a_focus = torch.where(prior_area > 0, m_s.sum(1) / prior_area.clamp_min(1e-12), torch.zeros_like(prior_area))
    mixed = gamma * m_s + (1 - gamma) * m_d.float() * m_prior  # eq. 9, second case
    M = torch.where((a_focus > tau)[:, None], m_s, mixed)
    return M, m_s, a_focus


# --- identity losses (WithAnyone) ------------------------------------------------------------------

def id_loss(emb_pred: torch.Tensor, emb_gt: torch.Tensor) -> torch.Tensor:
    """Seed 002, eq. 4: L_ID = 1 - cos(g, t), averaged over the batch; g from the GT-aligned crop of the
    prediction (face_align.arcface_align), t from the GT face."""
    return (1 - F.cosine_similarity(emb_pred.float(), emb_gt.float(), dim=-1)).mean()


def info_nce(anchor: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor, temperature: float, *,
             negative_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Seed 002, eq. 5: -log exp(cos(g, t)/T) / (exp(cos(g, t)/T) + sum_j exp(cos(g, n_j)/T)), mean over B.

    anchor g [B, D], positive t [B, D], negatives n [B, K, D] per sample or [K, D] shared (the
    reference bank's other identities, app. F.1). Eq. 5 as printed sums only the negatives in the
    denominator; the cited InfoNCE (Oord et al.) includes the positive, which keeps the loss >= 0
    and makes it the cross-entropy of picking the positive, so we include it. The paper gives no
    temperature, hence no default. negative_mask [B, K] (True = use) drops negatives that share the
    anchor's identity, e.g. in-batch negatives.
    """
    g = F.normalize(anchor.float(), dim=-1)
    pos = (g * F.normalize(positive.float(), dim=-1)).sum(-1, keepdim=True)  # [B, 1]
    n = F.normalize(negatives.float(), dim=-1)
    neg = g @ n.T if n.dim() == 2 else torch.einsum("bd,bkd->bk", g, n)  # [B, K]
    if negative_mask is not None:
        neg = neg.masked_fill(~negative_mask.bool(), float("-inf"))
    logits = torch.cat([pos, neg], 1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


def withanyone_loss(l_diff, l_id, l_cl, lambda_id: float = LAMBDA_ID, lambda_cl: float = LAMBDA_CL):
    """Seed 002, eq. 6: L = L_diff + lambda_ID L_ID + lambda_CL L_CL (both 0.1 in every phase)."""
    return l_diff + lambda_id * l_id + lambda_cl * l_cl


# --- ReFL rewards (UPER) ---------------------------------------------------------------------------

def zscore(x: torch.Tensor, eps: float = 1e-6, reference: torch.Tensor | None = None) -> torch.Tensor:
    """Batch z-score (x - mean) / std of x [B] (seed 001, sec. 3.3's R-hat), population std (ddof 0,
    as scipy.stats.zscore). `reference`: the values the mean and std come from instead of x (every
    rank's rewards and a window of earlier ones, RewardStats): over a micro-batch of 2 the
    z-scores are always -1 and +1, whatever the rewards.

    The mean and std are constants for autograd (detached). Otherwise the z-scores of a batch sum
    to zero identically and L_RL = -mean(R_composite) would have zero gradient; detached, each
    sample's reward gradient is rescaled by 1 / std, which is what balances the components.
    B = 1 or a batch with std <= eps has no spread to normalise by: the value is x - mean (0 for
    every sample) and the std is replaced by 1, so the gradient passes unscaled instead of blowing
    up by 1 / eps or vanishing.
    """
    x = x.float()
    ref = (x if reference is None else reference.to(x)).detach().float()
    mean = ref.mean()
    std = ref.std(unbiased=False) if ref.numel() > 1 else x.new_zeros(())
    std = torch.where(std > eps, std, torch.ones_like(std))
    return (x - mean) / std


class RewardStats:
    """What each reward's z-score is taken over: this step's rewards of every rank (all_gather
    under torch.distributed, as Ray Train sets it up) joined with the last `window` gathered
    values of earlier steps. UPER's effective batch is 32 (sec. 4); a micro-batch of 2 per GPU
    gives z-scores of +-1 whatever the rewards, so the statistics need more samples than one
    rank's step. The window trades a slowly moving mean for that: 0 keeps only this step's."""

    def __init__(self, window: int = 256):
        self.window, self.history = window, {}

    def reference(self, name: str, x: torch.Tensor) -> torch.Tensor:
        now = gathered(x.detach().float())
        past = self.history.setdefault(name, deque(maxlen=self.window or None))
        ref = torch.cat([torch.tensor(list(past), dtype=now.dtype, device=now.device), now])
        if self.window:
            past.extend(now.cpu().tolist())
        return ref


def gathered(x: torch.Tensor) -> torch.Tensor:
    """x [B] of every rank, concatenated in rank order (x itself outside torch.distributed)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def composite_reward(rewards: dict[str, torch.Tensor], weights: dict[str, float] | None = None,
                     stats: RewardStats | None = None) -> torch.Tensor:
    """Seed 001, sec. 3.3: R_composite = sum_k w_k zscore(R_k), UPER's weights 0.2 text, 0.2
    aesthetics, 0.4 subject by default; z-scores over the batch, or over what `stats` gathers
    (every rank, a window of earlier steps). The keys must match: a reward without a weight (or
    the reverse) is a configuration error, not something to drop quietly. The ReFL loss is
    -R_composite.mean()."""
    weights = UPER_WEIGHTS if weights is None else weights
    if set(rewards) != set(weights):
        raise ValueError(f"rewards {sorted(rewards)} and weights {sorted(weights)} name different components")
    return sum(float(w) * zscore(rewards[k], reference=None if stats is None else stats.reference(k, rewards[k]))
               for k, w in weights.items())


class _ClipGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, max_norm):
        ctx.max_norm = max_norm
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        norm = grad.flatten(1).norm(dim=1).view(-1, *([1] * (grad.dim() - 1)))
        return grad * (ctx.max_norm / norm.clamp_min(1e-12)).clamp(max=1.0), None


def clip_grad(x: torch.Tensor, max_norm: float = UPER_CLIP) -> torch.Tensor:
    """Identity forward; backward rescales the gradient reaching x to an L2 norm of at most max_norm
    per sample (over all non-batch elements) and leaves smaller ones alone. Seed 001, sec. 3.3:
    "we clip the gradient of the reward with respect to the generated image, grad_I R_sub, with a
    threshold of tau = 0.2": feed the reward model clip_grad(image) on the subject branch only.
    What is clipped is the gradient that arrives, i.e. grad_I R_sub times the upstream factor of the
    loss (-w_sub / (std * B) through composite_reward and the mean); it is exactly grad_I R_sub
    only if that factor is 1."""
    return _ClipGrad.apply(x, max_norm)


def clipped_reward(reward: torch.Tensor, image: torch.Tensor, max_norm: float = UPER_CLIP) -> torch.Tensor:
    """Seed 001, sec. 3.3, to the letter: the value of `reward` [B], whose gradient w.r.t. `image`
    is grad_I reward clipped to an L2 norm of max_norm per sample, whatever multiplies it later
    (clip_grad clips what arrives, after the composite's -w / (std * B)). The clipped gradient is
    taken once here and enters through a linear surrogate: reward + <image - sg(image), g_clipped>."""
    if not (torch.is_grad_enabled() and image.requires_grad):
        return reward  # evaluation: nothing to clip
    (g,) = torch.autograd.grad(reward.sum(), image, retain_graph=True)
    norm = g.flatten(1).norm(dim=1).clamp_min(1e-12)
    g = g * (max_norm / norm).clamp(max=1.0).view(-1, *([1] * (g.dim() - 1)))
    return reward.detach() + ((image - image.detach()) * g.detach()).flatten(1).sum(1)
