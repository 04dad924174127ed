"""`subjectforge run|plan|manifest|validate|report|forget`: the top floor, which may import anything
and which nothing imports. Pipelines and datasets are found through the registry
(runtime/registry.py), never by a path."""
from __future__ import annotations

import argparse
import sys

def cmd_run(args, rest) -> int:
    """Same as `python pipelines/<name>.py ...`: the pipeline registered under that name (a dataset's
    spec, synthetic, train, or a plugin's), never a path."""
    from runtime.driver import run
    from runtime.registry import get_pipeline
    from schemas.registry import UnknownDataset

    try:
        spec = get_pipeline(args.pipeline)
    except UnknownDataset as e:
        print(f"subjectforge run: {e}", file=sys.stderr)
        return 2
    sys.argv = [args.pipeline] + rest
    spec.main(rest) if spec.main is not None else run(spec, rest)
    return 0


def cmd_plan(args, rest) -> int:
    """The DAG of a pipeline for a config, without running it: each step with its kind and
    resources, the columns it reads and writes, the rejects it can produce. Exit 2 with one line
    on a miswired plan, an incomplete role or an invalid config."""
    from runtime.config import ConfigError, load_config
    from runtime.plan import PlanError, order
    from runtime.pools import size_pools
    from runtime.registry import SpecError, get_pipeline, pipelines
    from runtime.roles import RoleError
    from schemas.registry import UnknownDataset

    try:
        spec = get_pipeline(args.pipeline)
        if spec.plans is None:
            raise UnknownDataset(f"{args.pipeline} has no plan; pipelines with one: "
                                 f"{', '.join(n for n, p in pipelines().items() if p.plans is not None)}")
        cfg = load_config(spec.config, args.config, args.overrides)
        plans = order(spec.plans(cfg, None))
        splits, specs = [], {}
        if args.gpus is not None:  # the pools `pools: auto` would give on a cluster of that many GPUs
            for p in plans:
                specs[p.name] = size_pools(p, args.gpus, log=splits.append)
    except (ConfigError, PlanError, RoleError, SpecError, ValueError) as e:
        print(f"subjectforge plan: {e}", file=sys.stderr)
        return 2
    print("\n\n".join([p.describe(specs.get(p.name)) for p in plans] + splits))
    return 0


def cmd_manifest(args, rest) -> int:
    import pandas as pd

    from schemas.reader import load_manifest, load_rejects
    from schemas.store import DatasetDir

    pd.set_option("display.width", 200)
    pd.set_option("display.max_columns", 20)
    out = DatasetDir.open(args.dir)
    df = load_manifest(args.dir)
    rejects = load_rejects(args.dir)
    print(f"{out.dataset}: {len(df)} samples in {df['shard'].nunique() if len(df) else 0} shards, {len(rejects)} rejects")
    numeric = df.select_dtypes("number")
    if len(df) and not numeric.empty:
        print("\nscores and counts:")
        print(numeric.describe().T[["count", "mean", "std", "min", "50%", "max"]].to_string())
    for col in ("category", "split", "generation_mode"):
        if col in df and len(df):
            print(f"\nby {col}:\n{df[col].value_counts().to_string()}")
    if len(rejects):
        print("\nrejects by stage and reason:")
        print(rejects.groupby(["stage", "reason"]).size().rename("count").to_string())
    return 0


def cmd_validate(args, rest) -> int:
    from schemas.validation import validate

    report = validate(args.dir)
    print(report)
    return 0 if report.ok else 1


def cmd_report(args, rest) -> int:
    from report import build_report

    try:
        r = build_report(args.dir, args.out, query=args.query, samples=args.samples, per_page=args.per_page,
                         seed=args.seed, review=args.review)
    except ValueError as e:  # a usage error (--review on another dataset, --samples 0): one line, exit 2
        print(f"subjectforge report: {e}", file=sys.stderr)
        return 2
    problems = f"; {r['problems']} with problems (shown on their cards)" if r["problems"] else ""
    review = f"\n{r['review']} samples to review by hand: {r['out']}/review.csv" if r["review"] is not None else ""
    print(f"{r['samples']} samples on {len(r['pages'])} pages{problems}{review}\nopen {r['pages'][0]}")
    return 0


def cmd_forget(args, rest) -> int:
    """Identity takedown (pipelines/multiid_forget.py) under the lease of both MultiID folders, so no
    run writes them meanwhile. Exit 2 with one line on an unknown id, a photo without a face or a
    folder that is not a MultiID output; 1 when another run holds a lease."""
    import json

    from pipelines.multiid_forget import GROUPS, REFS, ForgetError, forget
    from runtime.lease import Lease, LeaseHeld
    from schemas.store import dataset_uri
    from schemas.store import DatasetDir

    if args.photo and not args.face_model:
        print("subjectforge forget: --photo needs --face-model (an insightface pack directory)", file=sys.stderr)
        return 2
    if not args.identity and not args.photo:
        print("subjectforge forget: give --identity ID (repeatable) and / or --photo PATH", file=sys.stderr)
        return 2
    dirs = [DatasetDir.open(dataset_uri(args.out, name), dataset=name) for name in (REFS, GROUPS)]
    bank = dirs[1].sub("bank", "bank.parquet")
    if dirs[1].fs.get_file_info(bank).type.name != "File":
        print(f"subjectforge forget: {bank} does not exist: --out must be a MultiID output folder", file=sys.stderr)
        return 2
    held = []
    try:
        for d in dirs:
            held.append(Lease(d, timeout_s=args.lease_timeout).acquire(force=args.force))
        summary = forget(args.out, identity_ids=args.identity, photo=args.photo, face_model=args.face_model,
                         threshold=args.threshold)
    except LeaseHeld as e:
        print(f"forget not started: {e}", file=sys.stderr)
        return 1
    except ForgetError as e:
        print(f"subjectforge forget: {e}", file=sys.stderr)
        return 2
    finally:
        for lease in held:
            lease.release()
    print(json.dumps(summary, indent=2))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="subjectforge", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a pipeline: subjectforge run dip --config ... --out ...")
    r.add_argument("pipeline")
    pl = sub.add_parser("plan", help="print a pipeline's DAG for a config without running it")
    pl.add_argument("pipeline")
    pl.add_argument("--config", required=True)
    pl.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=VALUE")
    pl.add_argument("--gpus", type=float, help="size the GPU pools as pools: auto would on this many GPUs")
    m = sub.add_parser("manifest", help="counts, score summaries and rejects of OUT/<dataset>")
    m.add_argument("dir")
    v = sub.add_parser("validate", help="check OUT/<dataset> against its schema; non-zero exit on problems")
    v.add_argument("dir")
    rp = sub.add_parser("report", help="static HTML page(s) of OUT/<dataset>: samples with their pictures, "
                                       "rejects, score histograms, stage throughput")
    rp.add_argument("dir")
    rp.add_argument("--out", help="report folder (default: <dir>/report for a local dataset)")
    rp.add_argument("--query", help="manifest filter, pandas DataFrame.query syntax: \"category == 'animal'\"")
    rp.add_argument("--samples", type=int, default=240, help="at most this many samples (a seeded draw)")
    rp.add_argument("--per-page", type=int, default=24)
    rp.add_argument("--seed", type=int, default=0)
    rp.add_argument("--review", action="store_true", help="DIP: only the samples of review.csv (rubric scores "
                                                          "next to the gates, 8-9 / 6-7)")
    f = sub.add_parser("forget", help="identity takedown: remove an identity's reference photos, every group photo "
                                      "a face of which reaches its center, its bank row; keep a tombstone")
    f.add_argument("dataset", choices=["multiid"])
    f.add_argument("--out", required=True, help="the pipeline's --out folder (holds multiid/ and multiid_refs/)")
    f.add_argument("--identity", type=int, action="append", default=[], metavar="ID", help="identity id (repeatable)")
    f.add_argument("--photo", help="a photo of the person: every bank identity a face of it reaches is forgotten")
    f.add_argument("--face-model", help="insightface pack directory for --photo")
    f.add_argument("--threshold", type=float, default=0.4, help="cosine to a center at which a face is the person")
    f.add_argument("--force", action="store_true", help="take over the leases of a run that is dead")
    f.add_argument("--lease-timeout", type=float, default=120.0, help=argparse.SUPPRESS)
    args, rest = p.parse_known_args(argv)
    if args.cmd != "run" and rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    from schemas.registry import DatasetModuleError

    try:
        return {"run": cmd_run, "plan": cmd_plan, "manifest": cmd_manifest, "validate": cmd_validate,
                "report": cmd_report, "forget": cmd_forget}[args.cmd](args, rest)
    except DatasetModuleError as e:  # an installed or project dataset module that does not import
        print(f"subjectforge {args.cmd}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
