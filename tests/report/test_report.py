"""`subjectforge report`: what is on the pages (cards, pictures, pagination, selection), what bad
shards turn into, and every page rendered by a real headless Chromium with every image loaded."""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from report import build_report
from report.images import heatmap, mask_overlay, palette, with_boxes
from runtime.cli import main as cli
from schemas.reader import load_manifest
from schemas.store import DatasetDir
from tests.helpers import synthetic_rows, write_rows

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def browser():
    """Debian's chromium driven by chromedriver (selenium); CI installs both (.ci/run)."""
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium and chromium-driver (.ci/run)")
        pytest.skip("chromium / chromedriver not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--window-size=1400,1000"):
        opts.add_argument(flag)
    return webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))


def render(driver, page: Path, png: Path) -> list[dict]:
    """Open a page, screenshot all of it, and return every <img>'s load state."""
    driver.get(page.as_uri())
    images = driver.execute_script(
        "return Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, w: i.naturalWidth}))")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.set_window_size(1400, min(height, 12000))
    driver.save_screenshot(str(png))
    return images


def cards_in(html: str) -> int:
    return len(re.findall(r'<div class="card"', html))


@pytest.fixture(scope="module")
def driver():
    d = browser()
    yield d
    d.quit()


@pytest.mark.parametrize("fixture, pictures", [
    ("dip_tiny", {"x_r reference", "x_w winner", "x_l loser", "M_prior on x_w", "M_d complexity"}),
    ("multiid_tiny", {"group photo"}),
    ("uper_tiny", {"ref_clean", "target"}),
    ("iapo_tiny", {"image_0", "image_1"}),
])
def test_every_page_renders_in_chromium(fixture, pictures, request, driver, tmp_path):
    _, out, _ = request.getfixturevalue(fixture)
    dataset = fixture.removesuffix("_tiny")
    n = len(load_manifest(f"{out}/{dataset}"))
    assert n > 0
    r = build_report(f"{out}/{dataset}", tmp_path / "report", per_page=4)
    assert r["samples"] == n and r["problems"] == 0
    assert len(r["pages"]) == -(-n // 4)
    seen_cards = 0
    for i, page in enumerate(r["pages"]):
        html = page.read_text()
        assert "http://" not in html and "https://" not in html  # nothing to fetch: self-contained
        images = render(driver, page, tmp_path / f"{dataset}-{i}.png")
        assert images, page
        assert [im for im in images if not im["complete"] or im["w"] == 0] == []
        assert len(images) == html.count("<img ")
        labels = {im["alt"].removesuffix(" (preferred)") for im in images}
        assert pictures <= labels
        seen_cards += cards_in(html)
        shot = np.asarray(Image.open(tmp_path / f"{dataset}-{i}.png").convert("RGB"))
        assert shot.shape[0] >= 1000 and shot.std() > 20  # a page with pictures, not a blank one
    assert seen_cards == n
    index = r["pages"][0].read_text()
    assert "per-stage throughput" in index and "score histograms" in index


def test_multiid_faces_coloured_by_identity_beside_references(multiid_tiny, tmp_path):
    _, out, _ = multiid_tiny
    rows = DatasetDir.open(f"{out}/multiid").read_manifests().to_pylist()
    r = build_report(f"{out}/multiid", tmp_path)
    html = r["pages"][0].read_text()
    assigned = {i for row in rows for i in row["identity"] if i >= 0}
    assert assigned, "the tiny MultiID run assigns at least one face"
    refs = load_manifest(f"{out}/multiid_refs")
    for ident in assigned:
        n_refs = min(3, int((refs["identity_id"] == ident).sum()))
        assert f"id {ident}: best {n_refs} of its bank references" in html
        color = "#%02x%02x%02x" % palette(ident)
        assert html.count(f'border-color: {color}') >= n_refs  # the references framed in the face's colour
    for row in rows:
        for s, m in zip(row["similarity"], row["margin"]):
            assert f"similarity {s:.3f}, margin {m:.3f}" in html


def test_boxes_overlay_and_heatmap_pixels():
    img = np.full((100, 200, 3), 128, np.uint8)
    boxed = np.asarray(with_boxes(img, [[10, 20, 60, 80]], [palette(3)], side=200))
    assert tuple(boxed[20, 30]) == palette(3) and tuple(boxed[50, 100]) == (128, 128, 128)
    mask = np.zeros((100, 200), bool)
    mask[:50] = True
    tinted = mask_overlay(img, mask, color=(255, 0, 0), alpha=0.5)
    assert tuple(tinted[10, 10]) == (192, 64, 64) and tuple(tinted[90, 10]) == (128, 128, 128)
    hm = np.asarray(heatmap(np.array([[0.0, 1.0]], np.float32), (20, 10)))
    assert hm.shape == (10, 20, 3)
    assert (hm[:, :10] == hm[0, 0]).all() and (hm[:, 10:] == hm[0, 19]).all()  # square-edged cells
    assert hm[0, 0].sum() < 30 and hm[0, 19].sum() > 600  # magma: black at 0, pale at 1
    assert palette(0) != palette(1) and palette(0) == palette(20)


@pytest.fixture(scope="module")
def synthetic_dip(ray_local, tmp_path_factory):
    out = tmp_path_factory.mktemp("report_dip") / "dip"
    rows = synthetic_rows("dip", 30)
    for row in rows:  # random lists are no boxes: one box per subject, inside the 64 px image
        row["boxes"] = [[4.0, 4.0, 40.0, 40.0 + i] for i in range(len(row["subjects"]))]
    write_rows(rows, str(out), "dip", target_samples=8)
    return str(out)


def test_pagination_draw_and_filter(synthetic_dip, tmp_path):
    df = load_manifest(synthetic_dip)
    everything = build_report(synthetic_dip, tmp_path / "all", per_page=7)
    assert len(everything["pages"]) == 5  # 30 samples, 7 per page
    keys = json.loads((tmp_path / "all" / "report.json").read_text())["keys"]
    assert sorted(keys) == sorted(df["key"]) and keys == sorted(keys)
    on_pages = [k for p in everything["pages"] for k in re.findall(r'<div class="card" id="([0-9a-f]+)"', p.read_text())]
    assert on_pages == keys  # every sample once, in page order

    def drawn(seed, where):
        build_report(synthetic_dip, tmp_path / where, samples=10, per_page=4, seed=seed)
        return json.loads((tmp_path / where / "report.json").read_text())["keys"]

    a, b, c = drawn(0, "a"), drawn(0, "b"), drawn(1, "c")
    assert a == b and len(a) == 10 and len(set(a)) == 10 and set(a) <= set(df["key"])
    assert a != c
    assert len(list((tmp_path / "a").glob("page-*.html"))) == 2  # 10 samples, 4 per page: index + 2

    query = f"category == '{df['category'].iloc[0]}'"
    filtered = build_report(synthetic_dip, tmp_path / "q", query=query)
    keys = json.loads((tmp_path / "q" / "report.json").read_text())["keys"]
    assert sorted(keys) == sorted(df.query(query)["key"]) and filtered["samples"] == len(keys) < 30

    build_report(synthetic_dip, tmp_path / "all", samples=5, per_page=7)  # a smaller rerun, same folder
    assert sorted(p.name for p in (tmp_path / "all").glob("*.html")) == ["index.html"]


def test_bad_shards_become_problems_on_cards(synthetic_dip, tmp_path):
    broken = tmp_path / "dip"
    shutil.copytree(synthetic_dip, broken)
    df = load_manifest(str(broken))
    shard_of = dict(zip(df["key"], df["shard"]))
    victim = sorted(df["key"])[0]
    tar_path = broken / "shards" / f"{shard_of[victim]}.tar"
    members = []
    with tarfile.open(tar_path) as tf:
        for m in tf.getmembers():
            data = tf.extractfile(m).read()
            if m.name == f"{victim}.win.jpg":
                data = b"not a jpeg"
            members.append((m, data))
    gone = next(k for k in sorted(df["key"]) if shard_of[k] != shard_of[victim])
    with tarfile.open(broken / "shards" / f"{shard_of[gone]}.tar") as tf:
        kept = [(m, tf.extractfile(m).read()) for m in tf.getmembers() if not m.name.startswith(gone)]
    for path, items in ((tar_path, members), (broken / "shards" / f"{shard_of[gone]}.tar", kept)):
        with tarfile.open(path, "w") as tf:
            for m, data in items:
                m.size = len(data)
                tf.addfile(m, io.BytesIO(data))

    r = build_report(str(broken), tmp_path / "report")
    problems = json.loads((tmp_path / "report" / "report.json").read_text())["problems"]
    assert r["samples"] == 30 and set(problems) == {victim, gone}
    assert any("win: does not decode" in p for p in problems[victim])
    assert problems[gone] == [f"not found in shard {shard_of[gone]}"]
    html = r["pages"][0].read_text() + "".join(p.read_text() for p in r["pages"][1:])
    card = html[html.index(f'id="{victim}"'):]
    card = card[:card.index('<div class="card"', 1) if '<div class="card"' in card[1:] else len(card)]
    assert 'alt="x_r reference"' in card and 'alt="x_w winner"' not in card  # the rest still shows


def test_empty_dataset_and_cli(synthetic_dip, tmp_path, capsys):
    empty = tmp_path / "uper"
    DatasetDir.open(str(empty), dataset="uper").makedirs()
    r = build_report(str(empty), tmp_path / "empty")
    assert r["samples"] == 0 and "no samples selected" in r["pages"][0].read_text()

    assert cli(["report", synthetic_dip, "--out", str(tmp_path / "cli"), "--per-page", "12", "--seed", "2",
                "--samples", "20"]) == 0
    printed = capsys.readouterr().out
    assert "20 samples on 2 pages" in printed and str(tmp_path / "cli" / "index.html") in printed


def test_dip_review_list_is_the_scores_next_to_the_gates(ray_local, tmp_path, capsys):
    """review.csv: the kept samples a person should check, a positive rubric score of 8-9 or a
    negative one of 6-7 for some subject (the gates are >= 9 / <= 6); --review shows only them;
    the list is DIP's, --review elsewhere is a usage error."""
    import csv

    scores = [(10, 2, ""), (9, 3, "positive 9"), (8, 1, "positive 8"), (10, 6, "negative 6"),
              (10, 7, "negative 7"), (9, 6, "positive 9; negative 6"), (10, 5, ""), (None, None, "")]
    rows = synthetic_rows("dip", len(scores), seed=5)
    expected = {}
    for row, (pos, neg, why) in zip(rows, scores):
        k = len(row["subjects"])
        row["boxes"] = [[4.0, 4.0, 40.0, 40.0 + i] for i in range(k)]
        row["pos_scores"], row["neg_scores"] = [10] * (k - 1) + [pos], [0] * (k - 1) + [neg]
        if why:
            expected[row["key"]] = why
    out = tmp_path / "dip"
    write_rows(rows, str(out), "dip", target_samples=8)
    assert cli(["report", str(out), "--out", str(tmp_path / "r")]) == 0
    assert "5 samples to review by hand" in capsys.readouterr().out
    with (tmp_path / "r" / "review.csv").open() as f:
        listed = list(csv.DictReader(f))
    assert {r["key"]: r["borderline"] for r in listed} == expected
    assert [r["key"] for r in listed] == sorted(expected)
    assert all(len(r["pos_scores"].split(";")) == len(r["subjects"].split(";")) for r in listed)
    assert "review.csv" in (tmp_path / "r" / "index.html").read_text()

    only = build_report(str(out), tmp_path / "only", review=True)
    assert sorted(json.loads((tmp_path / "only" / "report.json").read_text())["keys"]) == sorted(expected)
    assert only["samples"] == only["review"] == 5

    uper = tmp_path / "uper"
    write_rows(synthetic_rows("uper", 2), str(uper), "uper", target_samples=8)
    assert cli(["report", str(uper), "--review"]) == 2 and "has no review list (DIP's" in capsys.readouterr().err
    assert build_report(str(uper), tmp_path / "u")["review"] is None and not (tmp_path / "u" / "review.csv").exists()
