"""`subjectforge report OUT/<dataset>`: a static HTML report to look at what a run made.

    subjectforge report out/dip                                   # out/dip/report/index.html
    subjectforge report out/multiid --query "split == 'bench'" --samples 48 --per-page 12
    subjectforge report s3://bucket/dip --out ./dip-report --seed 3

Pages: index.html (summary: counts, the latest run's stage table, rejects by stage and reason,
score histograms, per-stage throughput, and the first page of samples), then page-0002.html, ...
Every picture is a data URI, so each page is one self-contained file that needs no network and no
shards. Samples: the manifest rows that pass `--query` (pandas DataFrame.query); when more than
`--samples` pass, a seeded draw of that many, so a rerun shows the same ones. Only the shards
holding chosen keys are read, one sample at a time, so a report of a large dataset costs the
thumbnails, not the dataset.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
from jinja2 import Environment, FileSystemLoader, select_autoescape

from report import cards as C
from report import charts
from report.review import write_review
from runtime.registry import get_output
from schemas.contract import decode_member
from schemas.reader import load_manifest, load_rejects, read_samples
from schemas.store import DatasetDir, resolve_filesystem


def select(manifest: pd.DataFrame, query: str | None, samples: int, seed: int) -> tuple[pd.DataFrame, str]:
    """The rows to show, in page order, and how they were chosen: the filter, then a seeded draw
    if more than `samples` pass."""
    rows = manifest.query(query) if query else manifest
    how = (f"filter {query!r}: " if query else "") + f"{len(rows)} of {len(manifest)} samples"
    if len(rows) > samples:
        return rows.sample(n=samples, random_state=seed), how + f", a seeded draw (seed {seed}) of {samples}"
    return rows.sort_values("key"), how


def records(df: pd.DataFrame) -> list[dict]:
    """Manifest rows as plain Python values (pandas holds list columns as numpy arrays)."""
    return pa.Table.from_pandas(df, preserve_index=False).to_pylist()


def decoded(raw: dict, schema) -> tuple[dict, list[str]]:
    """Members decoded one by one: a member that does not decode is named, the others still show."""
    out, problems = {}, []
    for name, data in raw.items():
        if name in ("key", "shard"):
            continue
        member = schema.member_for(name)
        try:
            out[name] = data if member.ext == "json" else decode_member(member, data)
        except Exception as e:  # noqa: BLE001
            problems.append(f"{name}: does not decode ({type(e).__name__}: {e})")
    return out, problems


def read_chosen(dataset_dir: str, rows: pd.DataFrame, schema) -> tuple[dict[str, tuple[dict, list[str]]], str | None]:
    """key -> (members, problems) for the chosen rows; a shard that cannot be read ends the read
    with its error, and the samples not reached are shown as missing."""
    found, error = {}, None
    if rows.empty:
        return found, None
    try:
        for raw in read_samples(dataset_dir, dataset=schema.name, manifest=rows, decode=False,
                                split_by_node=False, split_by_worker=False):
            found[raw["key"]] = decoded(raw, schema)
    except Exception as e:  # noqa: BLE001
        error = f"reading the shards stopped: {type(e).__name__}: {e}"
    return found, error


def summary(dataset_dir: str, dataset: str, manifest: pd.DataFrame, charted: tuple[str, ...]) -> dict:
    out = DatasetDir.open(dataset_dir, dataset=dataset)
    info = out.read_info() or {}
    rejects = load_rejects(dataset_dir)
    stages = info["runs"][-1]["stages"] if info.get("runs") else []
    chart_list = [(charts.rejects_by_reason(rejects), "rejects by stage and reason"),
                  (charts.score_histograms(manifest, charted), "score histograms"),
                  (charts.stage_throughput(stages), "per-stage throughput")]
    examples = []
    if not rejects.empty:
        for (stage, reason), group in rejects.groupby(["stage", "reason"]):
            first = group.iloc[0]
            examples.append({"stage": stage, "reason": reason, "count": len(group), "key": first["key"],
                             "input": first.get("input"), "detail": first.get("detail")})
    return {"samples": len(manifest), "shards": manifest["shard"].nunique() if len(manifest) else 0,
            "rejects": len(rejects), "runs": len(info.get("runs") or []), "stages": stages,
            "charts": [{"uri": u, "alt": alt} for u, alt in chart_list if u], "reject_examples": examples}


def default_out(dataset_dir: str) -> Path:
    fs, path = resolve_filesystem(dataset_dir)
    if isinstance(fs, pafs.LocalFileSystem):
        return Path(path) / "report"
    return Path(f"{path.rstrip('/').rsplit('/', 1)[-1]}-report")


def build_report(dataset_dir: str, out: str | os.PathLike | None = None, *, query: str | None = None,
                 samples: int = 240, per_page: int = 24, seed: int = 0, review: bool = False) -> dict:
    """Write the report; returns {"out", "pages" (paths), "samples", "problems", "review"}. DIP:
    review.csv lists the samples next to the rubric gates (report.review); `review` shows only them."""
    if samples < 1 or per_page < 1:
        raise ValueError("samples and per_page must be >= 1")
    dataset = DatasetDir.open(dataset_dir).dataset
    spec = get_output(dataset)  # its schema, card, charts and review list
    schema = spec.schema
    manifest = load_manifest(dataset_dir)
    if review and spec.review is None:
        raise ValueError(f"{dataset} has no review list (DIP's: rubric scores next to the gates)")
    out_dir = Path(out) if out is not None else default_out(dataset_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    to_review = spec.review(manifest) if spec.review is not None else None
    if to_review is not None:
        write_review(to_review, out_dir / "review.csv")
    chosen, selection = select(to_review if review else manifest, query, samples, seed)
    if review:
        selection = f"the review list (rubric scores 8-9 / 6-7): {selection}"
    for old in out_dir.glob("page-*.html"):  # a smaller rerun must not leave stale pages linked nowhere
        old.unlink()

    found, read_error = read_chosen(dataset_dir, chosen, schema)
    ctx = spec.report_context(dataset_dir, chosen) if spec.report_context is not None else {}
    card_of = spec.card
    rendered = []
    for row in records(chosen):
        if row["key"] not in found:
            rendered.append(C.Card(row["key"], problems=[read_error or f"not found in shard {row['shard']}"]))
            continue
        members, problems = found[row["key"]]
        try:
            card = card_of(row, members, ctx)
        except Exception as e:  # noqa: BLE001 - one odd row must not cost the whole report
            card = C.Card(row["key"], problems=[f"card: {type(e).__name__}: {e}"])
        card.problems = problems + card.problems
        rendered.append(card)

    n_pages = max(1, -(-len(rendered) // per_page))
    pages = [{"number": i + 1, "file": "index.html" if i == 0 else f"page-{i + 1:04d}.html"} for i in range(n_pages)]
    env = Environment(loader=FileSystemLoader(Path(__file__).parent), autoescape=select_autoescape(["j2", "html"]))
    template = env.get_template("page.html.j2")
    info = summary(dataset_dir, dataset, manifest, spec.charts)
    info["review"] = None if to_review is None else len(to_review)
    paths = []
    for p in pages:
        start = (p["number"] - 1) * per_page
        page_cards = rendered[start:start + per_page]
        html = template.render(dataset=dataset, title=spec.title, source=dataset_dir,
                               selection=selection, pages=pages, page=p["number"],
                               summary=info if p["number"] == 1 else None, cards=page_cards,
                               first=start + 1 if page_cards else 0, last=start + len(page_cards), total=len(rendered))
        path = out_dir / p["file"]
        tmp = path.with_suffix(".tmp")
        tmp.write_text(html, encoding="utf-8")
        tmp.replace(path)  # a reader never sees a half-written page
        paths.append(path)
    (out_dir / "report.json").write_text(json.dumps(
        {"dataset": dataset, "source": dataset_dir, "query": query, "seed": seed, "samples": samples,
         "per_page": per_page, "keys": [c.key for c in rendered],
         "problems": {c.key: c.problems for c in rendered if c.problems}}, indent=1))
    return {"out": out_dir, "pages": paths, "samples": len(rendered),
            "problems": sum(bool(c.problems) for c in rendered), "review": info["review"]}
