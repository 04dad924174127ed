"""The dataset card: `OUT/<dataset>/README.md` in the Hugging Face dataset-card format, written from
dataset.json and the dataset's spec (its paper, title, sections: runtime/registry.py) by whatever
writes dataset.json above the data contract: the driver after each plan's write and hooks, the
takedown, so what a folder says of itself is never older than its last run, takedown or bench split.

The YAML header is `huggingface_hub`'s DatasetCardData with `datasets`' own `dataset_info` (the
features of the tar members as `load_dataset("webdataset", ...)` yields them, the json member a
struct of the manifest's columns) and a `configs` entry whose data_files are the shards, so the
folder loads as it is, from a disk, S3 or the Hub:

    from datasets import load_dataset
    ds = load_dataset("webdataset", data_files="OUT/dip/shards/*.tar", features=<the card's>)

A family member (DIP's mask_0, mask_1, ...) has one feature per name the writer has seen in the
dataset (dataset.json `members`); a sample without one of them reads None there.
"""
from __future__ import annotations

from schemas.contract import DatasetSchema
from schemas.store import DatasetDir
SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
         (10_000_000, "1M<n<10M"))


def features(schema: DatasetSchema, members: list[str]):
    """datasets.Features of a sample as the webdataset loader yields it: `__key__`, `__url__`,
    one feature per member file name (`ref.jpg`), images as Image, arrays as nested lists, json
    as a struct of the manifest's columns."""
    import pyarrow as pa
    from datasets import Features, Image, List, Value

    out = {"__key__": Value("string"), "__url__": Value("string")}
    for name in sorted(set(members) | {f"{m.name}.{m.ext}" for m in schema.members if not m.family}):
        stem = name.rsplit(".", 1)[0]
        member = schema.member_for(stem)
        if member.kind in ("image", "mask", "alpha"):
            out[name] = Image()
        elif member.kind == "array":
            feature = Value(member.dtype or "float32")
            for _ in range(member.ndim or 1):
                feature = List(feature)
            out[name] = feature
        else:  # the json member: the manifest row (writer._encode), less the shard it is in
            fields = [f for f in schema.manifest_schema if f.name != "shard"]
            out[name] = Features.from_arrow_schema(pa.schema(fields))
    return Features(out)


def write_card(d: DatasetDir, output, info: dict) -> None:
    """OUT/<dataset>/README.md of `d` from its dataset.json `info`; `output`: its registry Output."""
    d.write_bytes_atomic(d.sub("README.md"), card_text(output.schema, info, output).encode())


def card_text(schema: DatasetSchema, info: dict, output=None) -> str:
    """README.md of a dataset folder from its dataset.json (`output`: the registry's Output of the
    schema, looked up when not given)."""
    if output is None:
        from runtime.registry import get_output

        output = get_output(schema.name)
    from datasets import DatasetInfo, SplitDict, SplitInfo
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCard, DatasetCardData

    counts = info.get("counts") or {}
    n = int(counts.get("samples") or 0)
    config = info.get("config") or {}
    splits = SplitDict()
    splits.add(SplitInfo(name="train", num_examples=n))
    data = DatasetCardData(
        license=config.get("license") or "other",
        task_categories=list(schema.tasks),
        tags=["subjectforge", schema.name, "webdataset"],
        pretty_name=f"subjectforge {schema.name}",
        size_categories=[next((label for top, label in SIZES if n < top), "n>1M")],
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": "shards/*.tar"}]}],
    )
    DatasetInfosDict({"default": DatasetInfo(features=features(schema, info.get("members") or []),
                                             splits=splits)}).to_dataset_card_data(data)
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body(schema, info, output)}").content


def body(schema: DatasetSchema, info: dict, output) -> str:
    from runtime.registry import spec_of_output

    counts = info.get("counts") or {}
    config = info.get("config") or {}
    paper = spec_of_output(schema.name).paper
    runs = info.get("runs") or []
    lines = [f"# subjectforge {schema.name}: {output.title}", "",
             f"Built by [subjectforge](https://github.com/subjectforge/subjectforge) following {paper.title} "
             f"(seed {paper.seed}: {output.sections}).", ""]
    lines += ["## Counts", "",
              f"- samples: {counts.get('samples', 0)}",
              f"- shards: {counts.get('shards', 0)} (`shards/*.tar`, one Parquet manifest each in `manifest/`)",
              f"- rejects: {counts.get('rejects', 0)} (`rejects/*.parquet`)",
              f"- runs: {len(runs)}; schema version {info.get('schema_version')}", ""]
    rejects = counts.get("rejects_by_stage_reason") or []
    if rejects:
        lines += ["## Rejects by reason", "", "| stage | reason | rows |", "|---|---|---|"]
        lines += [f"| {r['stage']} | {r['reason']} | {r['count']} |" for r in rejects]
        lines.append("")
    split = info.get("bench_split")
    if isinstance(split, dict):
        lines += ["## Bench split", "",
                  f"Manifest column `split` (train / bench). Held-out identities: {len(split.get('held_out') or [])}; "
                  f"leakage check {'passed' if split.get('ok') else 'FAILED'} "
                  f"(identities shared by train and bench: {len(split.get('overlap') or [])}).", ""]
    models = {k: v["model"] for k, v in config.items() if isinstance(v, dict) and "model" in v}
    lines += ["## Config and models", "",
              f"Profile `{config.get('profile')}`, seed {config.get('seed')}; the whole resolved config is in "
              "`dataset.json`.", "", "| role | model |", "|---|---|"]
    lines += [f"| {role} | `{model}` |" for role, model in sorted(models.items())]
    lines += ["", "## Members", "", "| member | kind | required |", "|---|---|---|"]
    lines += [f"| `{m.name}.{m.ext}` | {m.kind} | {'yes' if m.required else 'no'} |" for m in schema.members]
    lines += ["", "## Loading", "", "```python",
              "import glob, pandas as pd, webdataset as wds",
              "samples = wds.WebDataset(sorted(glob.glob(\"shards/*.tar\")))  # members as bytes",
              "manifest = pd.read_parquet(\"manifest/\")",
              "# Hugging Face datasets, with this card's features:",
              "from datasets import load_dataset",
              "from datasets.info import DatasetInfosDict",
              "from huggingface_hub import DatasetCard",
              "features = DatasetInfosDict.from_dataset_card_data(DatasetCard.load(\"README.md\").data)[\"default\"].features",
              "ds = load_dataset(\"webdataset\", data_files=\"shards/*.tar\", features=features, split=\"train\")",
              "```", ""]
    return "\n".join(lines)
