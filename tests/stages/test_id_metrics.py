"""stages.id_metrics against hand-computed values of WithAnyone's eq. 1, 2 and 8."""
import math

import numpy as np
import pytest

from stages.id_metrics import (
    EPS, blending, copy_paste, id_similarity, match_faces, sim, sim_gt, sim_ref,
)

T = np.array([1.0, 0.0, 0.0])
R = np.array([0.0, 1.0, 0.0])


def test_sim_hand_values():
    # (3, 4) . (4, 3) = 24; norms 5 and 5 -> 24 / 25
    assert sim([3.0, 4.0], [4.0, 3.0]) == pytest.approx(0.96)
    assert sim([1.0, 0.0], [-2.0, 0.0]) == pytest.approx(-1.0)
    assert sim([1.0, 0.0], [0.0, 5.0]) == pytest.approx(0.0)
    assert isinstance(sim([1.0, 0.0], [1.0, 1.0]), float)
    assert math.isnan(sim([0.0, 0.0], [1.0, 0.0]))  # a zero embedding has no direction


def test_g_equals_t_is_full_gt_agreement():
    g = T.copy()
    assert sim_gt(g, T) == pytest.approx(1.0)
    assert sim_ref(g, R) == pytest.approx(0.0)
    assert copy_paste(g, T, R) == pytest.approx(-1.0, abs=1e-6)


def test_g_equals_r_is_full_copy_paste():
    g = R.copy()
    assert sim_ref(g, R) == pytest.approx(1.0)
    assert sim_gt(g, T) == pytest.approx(0.0)
    assert copy_paste(g, T, R) == pytest.approx(1.0, abs=1e-6)


def test_in_plane_30_degrees_from_t_toward_r():
    g = np.array([math.cos(math.pi / 6), math.sin(math.pi / 6), 0.0])
    # theta_gt = 30 deg = pi/6, theta_gr = 60 deg = pi/3, theta_tr = 90 deg = pi/2
    # CP = (pi/6 - pi/3) / (pi/2) = (-pi/6) / (pi/2) = -1/3
    assert sim_gt(g, T) == pytest.approx(math.sqrt(3) / 2)
    assert sim_ref(g, R) == pytest.approx(0.5)
    assert copy_paste(g, T, R) == pytest.approx(-1 / 3)


def test_out_of_plane_with_non_orthogonal_t_r():
    t = np.array([1.0, 0.0, 0.0])
    r = np.array([1.0, 1.0, 0.0])  # 45 deg from t in the xy plane
    g = np.array([2.0, 0.0, 2.0])  # leaves the xy plane
    # cos(g, t) = 2 / (sqrt(8) * 1)        = 1/sqrt(2) -> theta_gt = pi/4
    # cos(g, r) = 2 / (sqrt(8) * sqrt(2))  = 2/4 = 1/2 -> theta_gr = pi/3
    # cos(t, r) = 1 / (1 * sqrt(2))        = 1/sqrt(2) -> theta_tr = pi/4
    # CP = (pi/4 - pi/3) / (pi/4) = (-pi/12) / (pi/4) = -1/3
    assert sim_gt(g, t) == pytest.approx(1 / math.sqrt(2))
    assert sim_ref(g, r) == pytest.approx(0.5)
    assert copy_paste(g, t, r) == pytest.approx(-1 / 3)
    # g = (1, 0, 1) against orthonormal t, r: theta_gt = pi/4, theta_gr = pi/2
    # CP = (pi/4 - pi/2) / (pi/2) = -1/2
    assert copy_paste([1.0, 0.0, 1.0], T, R) == pytest.approx(-0.5)


def test_eps_keeps_coincident_t_and_r_finite():
    g = np.array([0.3, -0.2, 0.9])
    cp = copy_paste(g, T, T.copy())  # theta_tr = 0: the denominator is eps
    assert np.isfinite(cp) and cp == pytest.approx(0.0)
    assert EPS == 1e-6


def test_eps_is_the_denominator_below_it():
    d = 1e-3
    t = np.array([1.0, 0.0])
    r = np.array([math.cos(d), math.sin(d)])
    # g = r: theta_gt = d, theta_gr = 0, theta_tr = d
    assert copy_paste(r, t, r) == pytest.approx(1.0, abs=1e-6)  # d / max(d, 1e-6) = 1
    assert copy_paste(r, t, r, eps=1e-2) == pytest.approx(0.1, rel=1e-6)  # d / 1e-2


def test_unnormalised_equals_normalised():
    rng = np.random.default_rng(0)
    g, t, r = rng.normal(size=(3, 16))
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    assert sim_gt(7.5 * g, 0.01 * t) == pytest.approx(sim_gt(unit(g), unit(t)))
    assert sim_ref(3.0 * g, 40.0 * r) == pytest.approx(sim_ref(unit(g), unit(r)))
    assert copy_paste(7.5 * g, 0.01 * t, 40.0 * r) == pytest.approx(
        copy_paste(unit(g), unit(t), unit(r)))


def test_batched_equals_per_row_and_stays_in_range():
    rng = np.random.default_rng(1)
    g, t, r = rng.normal(size=(3, 50, 8))
    cp, s = copy_paste(g, t, r), sim_gt(g, t)
    assert cp.shape == s.shape == (50,)
    for i in range(50):
        assert cp[i] == pytest.approx(copy_paste(g[i], t[i], r[i]))
        assert s[i] == pytest.approx(sim_gt(g[i], t[i]))
    assert np.all(np.abs(cp) <= 1 + 1e-9)  # eq. 2's [-1, 1] (spherical triangle inequality)
    # broadcasting: one t and r against many g
    cp_b = copy_paste(g, t[0], r[0])
    assert cp_b[5] == pytest.approx(copy_paste(g[5], t[0], r[0]))


def test_blending_2x2_by_hand():
    g = np.array([[1.0, 0.0], [0.0, 2.0]])
    t = np.array([[3.0, 4.0], [1.0, 1.0]])
    # cos(g1, t2) = (1*1 + 0*1) / (1 * sqrt(2)) = 0.70710678
    # cos(g2, t1) = (0*3 + 2*4) / (2 * 5)      = 0.8
    # M_Bld = (0.70710678 + 0.8) / 2 = 0.75355339; the diagonal (0.6, 0.707) does not count
    assert blending(g, t) == pytest.approx((1 / math.sqrt(2) + 0.8) / 2)
    assert blending(g, t) == pytest.approx(0.75355339)


def test_blending_3x3_orthonormal_gt_and_edge_cases():
    t = np.eye(3)
    g = np.array([[1.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    # off-diagonal cosines: cos(g1, t2) = 1/sqrt(2), all other five are 0 -> (1/sqrt(2)) / 6
    assert blending(g, t) == pytest.approx(1 / math.sqrt(2) / 6)
    assert math.isnan(blending(g[:1], t[:1]))  # N == 1: no off-diagonal
    with pytest.raises(ValueError):
        blending(g[:2], t)


def test_match_faces_is_optimal_not_greedy():
    t = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    g = np.array([[0.6, 0.5, math.sqrt(1 - 0.61)], [0.5, 0.1, math.sqrt(1 - 0.26)]])
    # cos matrix [[0.6, 0.5], [0.5, 0.1]]: greedy takes (g1, t1) = 0.6 then (g2, t2) = 0.1, total
    # 0.7; the optimum is (g1, t2) + (g2, t1) = 0.5 + 0.5 = 1.0
    gi, ti = match_faces(g, t)
    assert gi.tolist() == [0, 1] and ti.tolist() == [1, 0]


def test_match_faces_recovers_permutation_and_handles_extra_faces():
    rng = np.random.default_rng(2)
    t = rng.normal(size=(4, 32))
    perm = np.array([2, 0, 3, 1])
    g = 3.0 * t[perm] + 0.05 * rng.normal(size=(4, 32))  # generated face k shows identity perm[k]
    gi, ti = match_faces(g, t)
    assert gi.tolist() == [0, 1, 2, 3] and ti.tolist() == perm.tolist()
    assert sim_gt(g[gi], t[ti]) == pytest.approx(np.ones(4), abs=1e-2)
    gi, ti = match_faces(g, t[:2])  # 4 generated faces, 2 in GT: the two best only
    assert sorted(zip(gi.tolist(), ti.tolist())) == [(1, 0), (3, 1)]


def test_id_similarity_averages_over_models():
    per_model = {
        "arcface": ([3.0, 4.0], [1.0, 0.0]),  # 3/5 = 0.6
        "facenet": ([4.0, 3.0], [1.0, 0.0]),  # 4/5 = 0.8
        "adaface": ([1.0, 1.0], [0.0, 2.0]),  # 1/sqrt(2)
    }
    assert id_similarity(per_model) == pytest.approx((0.6 + 0.8 + 1 / math.sqrt(2)) / 3)
    with pytest.raises(ValueError):
        id_similarity({})


def test_id_similarity_averages_faces_within_a_model_first():
    per_model = {
        "arcface": (np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[0.0, 1.0], [0.0, 1.0]])),
        "facenet": ([3.0, 4.0], [0.0, 1.0]),
    }
    # arcface: faces at cos 0 and 1 -> 0.5; facenet: 4/5 = 0.8; models: (0.5 + 0.8) / 2 = 0.65
    # (pooling all three faces would give (0 + 1 + 0.8) / 3 = 0.6)
    assert id_similarity(per_model) == pytest.approx(0.65)
