"""What the trainer's examples carry (trainer/data.py): DIP's M_d pooled from the stored patches to
16 px tokens is min-max normalised again per image (seed 000, eq. 8); a MultiID face the centre
crop cuts leaves the ID losses."""
import numpy as np
import pytest

from trainer.data import dip_example


def test_m_d_is_min_max_normalised_after_pooling():
    # 8 px complexity cells under 16 px tokens: each token averages 2 x 2 cells
    cells = {(0, 0): [[0, 1], [0, 0]], (0, 1): [[1, 1], [0, 0]], (1, 0): [[1, 0], [1, 0]], (1, 1): [[1, 1], [1, 0]]}
    complexity = np.zeros((4, 4), np.float16)
    for (ty, tx), block in cells.items():
        complexity[2 * ty:2 * ty + 2, 2 * tx:2 * tx + 2] = block
    image = np.zeros((32, 32, 3), np.uint8)
    sample = {"json": {"prompt": "a dog"}, "ref": image, "win": image, "lose": image,
              "mask": np.ones((32, 32), bool), "complexity": complexity}
    m_d = dip_example(sample, 32)["m_d"]
    # pooled means 0.25 / 0.5 / 0.5 / 0.75 (max 0.75, not 1), then eq. 8: (C - 0.25) / 0.5
    np.testing.assert_allclose(m_d, [0.0, 0.5, 0.5, 1.0], atol=1e-6)
    assert m_d.min() == 0 and m_d.max() == 1


def test_flat_m_d_stays_zero():
    image = np.zeros((32, 32, 3), np.uint8)
    sample = {"json": {"prompt": "a dog"}, "ref": image, "win": image, "lose": image,
              "mask": np.ones((32, 32), bool), "complexity": np.full((2, 2), 0.7, np.float16)}
    np.testing.assert_array_equal(dip_example(sample, 32)["m_d"], np.zeros(4))


class OneReference:
    def get(self, key):
        return np.zeros((64, 64, 3), np.uint8)


def face(x: float, y: float) -> list[list[float]]:
    return [[x, y], [x + 10, y], [x + 5, y + 6], [x + 1, y + 12], [x + 9, y + 12]]


def multiid_sample(faces: list) -> dict:
    meta = {"caption": "two people", "identity": [3, 5], "reference_keys": {"3": ["r3"], "5": ["r5"]},
            "keypoints": faces}
    return {"json": meta, "image": np.zeros((64, 128, 3), np.uint8),
            "embeddings": np.eye(len(faces), 512, dtype=np.float32)}


def test_faces_the_centre_crop_cuts_leave_the_id_losses():
    from trainer.data import BadSample, multiid_example

    # a 128 x 64 photo: the 64 px centre crop keeps x in [32, 96); face 1 sits at x 5-15
    ex = multiid_example(multiid_sample([face(40, 20), face(5, 20), face(90, 20)]), 64, OneReference())
    np.testing.assert_allclose(ex["landmarks"], [np.array(face(8, 20))])  # x - 32; face 2 reaches x 100
    np.testing.assert_array_equal(ex["embeddings"], np.eye(3, 512, dtype=np.float32)[:1])
    assert ex["identities"] == [3, 5]  # both identities still leave the contrastive negatives
    with pytest.raises(BadSample, match="none inside"):
        multiid_example(multiid_sample([face(5, 20)]), 64, OneReference())
