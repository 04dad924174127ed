"""Member encoding rules, sample keys and config loading: pure functions, no Ray."""
import numpy as np
import pytest

from runtime.config import ConfigError, PipelineConfig, load_config
from schemas.contract import Member, decode_member, encode_member
from schemas.registry import get_schema
from stages.keys import sample_key
from stages.synthetic import random_sample

RNG = np.random.default_rng(0)


def test_png_members_round_trip_exactly():
    mask = RNG.random((17, 23)) > 0.5
    assert np.array_equal(decode_member(Member("m", "png", "mask"), encode_member(Member("m", "png", "mask"), mask)), mask)
    alpha = RNG.integers(0, 256, (9, 5), dtype=np.uint8)
    a = Member("a", "png", "alpha")
    assert np.array_equal(decode_member(a, encode_member(a, alpha)), alpha)
    img = RNG.integers(0, 256, (8, 6, 3), dtype=np.uint8)
    p = Member("p", "png", "image")
    assert np.array_equal(decode_member(p, encode_member(p, img)), img)


def test_npy_members_keep_dtype_and_values():
    m = Member("complexity", "npy", "array", dtype="float16", ndim=2)
    x = RNG.random((4, 7)).astype(np.float32)
    y = decode_member(m, encode_member(m, x))
    assert y.dtype == np.float16 and np.array_equal(y, x.astype(np.float16))
    with pytest.raises(ValueError):
        encode_member(m, np.zeros(3))  # wrong rank


def test_jpeg_bytes_pass_through_and_bad_images_raise():
    j = Member("ref", "jpg", "image")
    data = encode_member(j, RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    assert data[:2] == b"\xff\xd8" and encode_member(j, data) == data
    for bad in (np.full((4, 4), np.nan), np.zeros((0, 4, 3), np.uint8), np.zeros((4, 4, 4), np.uint8)):
        with pytest.raises(ValueError):
            encode_member(j, bad)
    with pytest.raises(Exception):
        decode_member(j, b"not a jpeg")


def test_json_member_has_no_nan():
    m = Member("json", "json", "json")
    assert decode_member(m, encode_member(m, {"a": np.float32(0.5), "b": float("nan"), "c": np.arange(2)})) == {
        "a": 0.5, "b": None, "c": [0, 1]}


def test_sample_key_is_stable_and_sensitive():
    a = sample_key({"prompt": "a dog", "seed": 1, "img": b"\x00\x01"}, {"steps": 28})
    assert a == sample_key({"seed": 1, "img": b"\x00\x01", "prompt": "a dog"}, {"steps": 28})
    assert len(a) == 32 and "." not in a
    assert a != sample_key({"prompt": "a dog", "seed": 2, "img": b"\x00\x01"}, {"steps": 28})
    assert a != sample_key({"prompt": "a dog", "seed": 1, "img": b"\x00\x02"}, {"steps": 28})
    assert a != sample_key({"prompt": "a dog", "seed": 1, "img": b"\x00\x01"}, {"steps": 50})


def test_family_members_and_required(tmp_path):
    dip = get_schema("dip")
    row = random_sample(dip, "k", np.random.default_rng(3))
    names = dip.member_names(row)
    assert names[:3] == ["ref", "win", "lose"] and "mask_0" in names and "json" in names
    assert dip.member_for("mask_12").size_of == "win" and dip.member_for("maskx") is None
    assert dip.missing_required(["ref", "win"]) == ["lose", "mask", "inpaint_mask", "complexity", "json"]


class Cfg(PipelineConfig):
    rubric_positive: int = 9


def test_config_yaml_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("seed: 3\nwrite:\n  target_shard_bytes: 1000\n")
    cfg = load_config(Cfg, p, ["write.target_shard_samples=7", "rubric_positive=10"])
    assert (cfg.seed, cfg.write.target_shard_bytes, cfg.write.target_shard_samples, cfg.rubric_positive) == (3, 1000, 7, 10)
    with pytest.raises(ConfigError, match="config rubric_positve: Extra inputs are not permitted"):
        load_config(Cfg, p, ["rubric_positve=10"])  # typo: unknown keys are errors, one line
    with pytest.raises(ValueError):
        load_config(Cfg, p, ["seed"])


def test_every_profile_loads_into_its_typed_config():
    from runtime.registry import datasets, pipelines
    from tests.conftest import ROOT

    files = sorted((ROOT / "configs").glob("*.yaml"))
    known = pipelines()
    assert {f.name.split(".")[0] for f in files} <= set(known)  # every YAML belongs to a registered pipeline
    for f in files:
        cfg = load_config(known[f.name.split(".")[0]].config, f)
        assert cfg.profile == ("gpu" if ".gpu." in f.name else "tiny")
    for spec in datasets().values():  # and every dataset declares a tiny and a gpu profile that load
        assert {"tiny", "gpu"} <= set(spec.profiles), spec.name
        for path in spec.profiles.values():
            load_config(spec.config, path)


def test_paper_thresholds_are_named_defaults():
    from configs import DIPConfig, IAPOConfig, MultiIDConfig, TrainConfig, UPERConfig

    dip, mid, uper, iapo, train = DIPConfig(), MultiIDConfig(), UPERConfig(), IAPOConfig(), TrainConfig()
    assert (dip.rubric_positive_min, dip.rubric_negative_max, dip.n_single, dip.n_multi) == (9, 6, 5000, 5000)
    assert (mid.retrieval_threshold_low, mid.retrieval_threshold_high, mid.assign_threshold) == (0.4, 0.5, 0.5)
    assert (uper.rating_min, uper.patch_size, uper.patch_stride) == (4, 224, 112)
    assert (iapo.w_pos, iapo.w_neg) == (1.0, 0.0)
    assert (train.focus_tau, train.focus_gamma) == (0.1, 0.3)
    assert train.reward_weights == {"text": 0.2, "aesthetic": 0.2, "subject": 0.4}


def test_only_output_fields_change_keys():
    from configs import DIPConfig

    base = DIPConfig()
    key = lambda cfg: sample_key({"prompt": "a corgi"}, cfg.output_fields())
    assert key(base) == key(DIPConfig(write={"target_shard_bytes": 10}, vlm={"model": base.vlm.model, "batch_size": 64}))
    assert key(base) != key(DIPConfig(steps=50))
    assert key(base) != key(DIPConfig(vlm={"model": "Qwen/Qwen2.5-VL-72B-Instruct"}))
