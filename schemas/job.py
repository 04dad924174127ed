"""The driver side every pipeline script shares: arguments, config, Ray start, resume, write and the
run summary. A pipeline script only builds its DAG between `resume` and `write`."""
from __future__ import annotations

import argparse
import json
import os
import sys

import pyarrow as pa
import pyarrow.compute as pc
import ray

from schemas.config import PipelineConfig, load_config
from schemas.contract import DatasetSchema
from schemas.store import DatasetDir
from schemas.writer import ShardDatasink


def parse_args(description: str, config_cls: type[PipelineConfig], argv=None):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--config", required=True, help="YAML config (configs/<pipeline>.<profile>.yaml)")
    p.add_argument("--out", required=True, help="output root: local path or URI (s3://bucket/prefix)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=VALUE",
                   help="override a config field, repeatable")
    args = p.parse_args(argv)
    cfg = load_config(config_cls, args.config, args.overrides)
    return cfg, args.out


def dataset_uri(out: str, dataset: str) -> str:
    return out.rstrip("/") + "/" + dataset


def start_ray(cfg: PipelineConfig) -> None:
    """Join the cluster of `ray job submit` (RAY_ADDRESS) or cfg.ray.address; else start Ray
    in-process on this machine."""
    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False)
    progress_bars()


def progress_bars(stream=None) -> bool:
    """Ray Data's per-operator progress bars when a person watches (stderr is a terminal); off in
    logs and `ray job logs`, where they are thousands of redrawn lines."""
    on = (stream or sys.stderr).isatty()
    ray.data.DataContext.get_current().enable_progress_bars = on
    return on


def drop_committed(ds: ray.data.Dataset, out: str, dataset: str) -> tuple[ray.data.Dataset, int]:
    """Resume: drop source rows whose key is already a sample or a reject, before any model work."""
    done = DatasetDir.open(dataset_uri(out, dataset), dataset=dataset).committed_keys()
    if not done:
        return ds, 0
    done_ref = ray.put(pa.array(sorted(done), pa.string()))

    def keep_new(batch: pa.Table) -> pa.Table:
        return batch.filter(pc.invert(pc.is_in(batch["key"], value_set=ray.get(done_ref))))

    return ds.map_batches(keep_new, batch_format="pyarrow"), len(done)


def write(ds: ray.data.Dataset, out: str, schema: DatasetSchema, cfg: PipelineConfig,
          stages: list[str], run_id: str | None = None, summary: bool = True) -> dict:
    """Write `ds` as the dataset's shards; a run that writes in passes gives each the same run_id
    (one record in dataset.json) and prints the summary after the last (summary=False before)."""
    sink = ShardDatasink(dataset_uri(out, schema.name), schema, target_bytes=cfg.write.target_shard_bytes,
                         target_samples=cfg.write.target_shard_samples, config=cfg.model_dump(), stages=stages,
                         run_id=run_id)
    ds.write_datasink(sink)
    info = sink.summary or sink.write_info([])
    if summary:
        print_summary(info, dataset_uri(out, schema.name))
    return info


def run(description: str, config_cls: type[PipelineConfig], build, schema: DatasetSchema, argv=None,
        workers: dict | None = None, prepare=None) -> dict:
    """The main of a one-dataset pipeline script: config from the command line, `prepare(cfg)`
    (the tiny profile builds the random-weight models the config points at), Ray, the script's
    `build(cfg, out, workers) -> (dataset, stage names)`, the write and its summary."""
    cfg, out = parse_args(description, config_cls, argv)
    if prepare is not None:
        prepare(cfg)
    start_ray(cfg)
    ds, stages = build(cfg, out, workers)
    return write(ds, out, schema, cfg, stages)


def print_summary(info: dict, where: str, file=None) -> None:
    """The latest run's per-stage table, as stored in dataset.json. `seconds` is the stage's work
    summed over its tasks and actors (not wall clock: stages overlap when streaming), and rows/s is
    rows in over those seconds, i.e. one worker's rate."""
    run = info["runs"][-1]
    rate = f", {run['samples_per_second']:.2f} samples/s" if run.get("samples_per_second") else ""
    print(f"\n{info['dataset']}: {run['samples_written']} samples in {len(run['shards_written'])} new shards "
          f"({run['wall_seconds']:.1f} s wall{rate}); dataset now {info['counts']['samples']} samples, "
          f"{info['counts']['shards']} shards, {info['counts']['rejects']} rejects", file=file)
    print(f"{'stage':<20}{'in':>8}{'out':>8}{'rejected':>10}{'seconds':>10}{'rows/s':>10}  reasons", file=file)
    for s in run["stages"]:
        rps = "-" if s["rows_per_second"] is None else f"{s['rows_per_second']:.1f}"
        print(f"{s['stage']:<20}{s['rows_in']:>8}{s['rows_out']:>8}{sum(s['rejected'].values()):>10}"
              f"{s['seconds']:>10.2f}{rps:>10}  {json.dumps(s['rejected']) if s['rejected'] else ''}", file=file)
    print(f"shards:    {where}/shards\nmanifests: {where}/manifest\nrejects:   {where}/rejects\n"
          f"info:      {where}/dataset.json\nreport:    subjectforge report {where}", file=file)
