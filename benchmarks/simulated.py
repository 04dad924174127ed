"""Each pipeline on simulated accelerators against the analytic bound of its pools, in one run: is
every GPU pool kept at the rate of the slowest one, with none starved by CPU stages, data
movement, backpressure or slow start-up?

    python benchmarks/simulated.py [--pipelines dip,multiid,uper,iapo] [--gpus 8] [--costs table.yaml]
                                   [--time-scale X] [--splits] [--json out.json] [--timeline dir]

Each pipeline runs its gpu profile (`pools: auto`: the split of --gpus GPUs that
runtime/pools.py computes from the cost table) in a fresh process, on a local Ray of --gpus
logical GPUs, with every model role replaced by its simulated accelerator (workers/simulated.py:
the real worker's resources and columns, a sleep from the cost table, outputs of the real shapes
and sizes), on synthetic inputs at 1024 px (its spec's `simulated.inputs`). The CPU stages, the data
movement, the object store and the writer are the real ones. The simulated clock runs at
--time-scale (sleeps are cost x scale) so that this machine's 2 cores can do the CPU work of the
pipeline's rate: an 8-GPU node has 100+ cores, so CPU stages must not be what binds here either,
or the ratio would measure the cores and not the scheduling. Rates are given at production speed
(measured on the simulated clock x scale).

Per pipeline:
    <pipeline> simulated 8 GPUs: <measured> samples/h, bound <b> samples/h, ratio <x>
    <pipeline> time to all pools busy: <s> s
- bound: the slowest pool's capacity (actors x share x batch / batch seconds) in the DAG segment
  that binds (a gather is a barrier: MultiID's group photos' first segment binds it);
- measured: rows per hour through that slowest pool in steady state, i.e. between the moments its
  first 10% and 90% of rows were done (its batches' end times). A pool starved by anything
  upstream or held back by anything downstream shows here;
- time to all pools busy: per segment, from the moment its last actor has loaded to the moment every
  actor of every pool has started a batch, less the time a zero-overhead schedule of the same
  pools needs for that (`ideal`: every CPU stage and transfer instant, each actor free from the
  moment the measured run loaded it, so a pool downstream of FLUX waits for FLUX's first batches,
  which no scheduler can shorten, and a FLUX pool that loaded first gives both the same head
  start). What remains is start-up and
  scheduling overhead in real seconds (NeMo Curator #1618's 161 s to 4 of 4 actors is this
  number); the largest segment's is printed.
A second line gives the whole run (from models loaded to the last commit, fill and drain
included) next to the zero-overhead schedule of the same N inputs.

--splits (DIP): the best split a user can write with one concurrency / num_gpus per role
(`pools: fixed`), by bound among every such split that fits, run against auto, for the default
table and for one where the VLM is 5x slower. Nothing here asserts a time.
"""
from __future__ import annotations

import argparse
import heapq
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# the project first, this folder off the path (benchmarks/workers.py would shadow the workers package)
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != HERE)]
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

from runtime.config import load_config  # noqa: E402
from runtime.costs import load_costs, slower  # noqa: E402
from runtime.driver import run as run_pipeline  # noqa: E402
from runtime.plan import order  # noqa: E402
from runtime.pools import SHARES, bound, packs, segments, size_pools  # noqa: E402
from runtime.registry import datasets, get_dataset  # noqa: E402
from workers.simulated import read_events, simulated_workers  # noqa: E402

# Inputs and simulated clock per pipeline are its spec's (`simulated`: runtime/registry.py), sized
# for 2 CPU cores: the scale keeps the CPU stages under about half the cores at the bound's rate;
# the inputs give the slowest pool 10+ batches an actor of steady state.


def plans_for(name: str, overrides: list[str], gpus: float, workers: dict):
    """(config, plans in order, plan -> step -> the ModelSpec a run on `gpus` GPUs gives it)."""
    spec = get_dataset(name)
    cfg = load_config(spec.config, spec.profiles["gpu"], overrides)
    plans = order(spec.plans(cfg, workers))
    specs = {p.name: size_pools(p, gpus, log=lambda *a: None) if cfg.pools == "auto" else {} for p in plans}
    return cfg, plans, specs


# -- the zero-overhead schedule ------------------------------------------------------------------
def ideal_schedule(pools: list[tuple[str, int, int, float]], n: int, seconds, ready=None) -> dict:
    """A chain of pools (step, actors, batch, share) fed n rows at t=0, every CPU stage and
    transfer instant: a free actor takes a full batch of the rows waiting (a partial one once its
    upstream is done). ready: per step, the times its actors become free (loaded; default all at
    0), so the ideal starts each pool when the measured run had it. Per step: the time its k-th
    actor first started (busy[step]), and the time the last row left the chain (end)."""
    waiting = [n] + [0] * len(pools)
    done = [0] * len(pools)
    free = [0] * len(pools)
    loaded = [0] * len(pools)  # actors past their load time: those running are loaded - free
    # an actor becoming free is a batch of no rows ending at its load time
    running = [(t, i, 0) for i, (step, actors, _, _) in enumerate(pools)
               for t in ((ready or {}).get(step) or [0.0] * actors)]
    heapq.heapify(running)
    busy = {step: [] for step, *_ in pools}
    t = min(x[0] for x in running) if running else 0.0
    while True:
        for i, (step, _, batch, share) in enumerate(pools):
            upstream_done = i == 0 or done[i - 1] == n
            while free[i] and (waiting[i] >= batch or (upstream_done and waiting[i] > 0)):
                take = min(batch, waiting[i])
                waiting[i] -= take
                free[i] -= 1
                if loaded[i] - free[i] > len(busy[step]):
                    busy[step].append(t)
                heapq.heappush(running, (t + seconds(step, take, share), i, take))
        if not running:
            return {"busy": busy, "end": t}
        t, i, rows = heapq.heappop(running)
        loaded[i] += rows == 0
        free[i] += 1
        done[i] += rows
        waiting[i + 1] += rows


# -- one run, in a fresh process -------------------------------------------------------------------
def one_run(spec: dict) -> dict:
    """In this process: Ray with the logical GPUs, the pipeline with simulated workers."""
    import ray

    costs = load_costs(spec["costs"])
    dataset = get_dataset(spec["pipeline"])
    workers = simulated_workers(costs, spec["time_scale"], spec["events"])
    store = int(spec["object_store_gb"] * 1e9) if spec.get("object_store_gb") else None
    ray.init(num_cpus=spec["cpus"], num_gpus=spec["gpus"], object_store_memory=store, include_dashboard=False,
             log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    argv = ["--config", dataset.profiles["gpu"], "--out", spec["out"]]
    for o in spec["overrides"]:
        argv += ["--set", o]
    t0 = time.time()
    run_pipeline(dataset, argv, workers=workers)
    if spec.get("timeline"):  # every task's start and end (chrome://tracing): where the seconds went
        ray.timeline(spec["timeline"])
    return {"start": t0, "end": time.time()}


def run(name: str, args, costs_path: str | None, extra: list[str], work: Path, n: int, scale: float) -> dict:
    """One simulated run of `name` on n inputs; its events, commits and bound."""
    events, out = work / "events", work / "out"
    events.mkdir(parents=True, exist_ok=True)
    simulated = get_dataset(name).simulated
    overrides = simulated.inputs(work / "inputs", n, side=args.side, seed=args.seed) + [
        # small shards: the commits' times are a fine-grained timeline
        "write.target_shard_samples=16", "write.target_shard_bytes=100000000000"] + extra
    spec = {"pipeline": name, "overrides": overrides, "events": str(events), "out": str(out), "costs": costs_path,
            "time_scale": scale, "gpus": args.gpus, "cpus": args.cpus,
            "object_store_gb": args.object_store_gb or simulated.object_store_gb,
            "timeline": str(Path(args.timeline).resolve() / f"{name}-{work.name}.json") if args.timeline else None}
    proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(spec)], capture_output=True, text=True,
                          cwd=ROOT)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"{name}: the simulated run failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    result = json.loads(line[len("RESULT "):])
    costs = load_costs(costs_path)
    cfg, plans, specs = plans_for(name, overrides, args.gpus, {})
    return analyse(name, plans, specs, costs, read_events(str(events)), out, scale, result)


def analyse(name: str, plans, specs: dict, costs, events: list[dict], out: Path, scale: float, result: dict) -> dict:
    """`specs`: plan -> step -> the ModelSpec the run gave it (pools: auto)."""
    pool = lambda plan, s: specs[plan.name].get(s.name, s.spec)  # noqa: E731
    import pandas as pd

    loaded = [e for e in events if e["event"] == "loaded"]
    batches = [e for e in events if e["event"] == "batch"]
    cursor, segs = 0.0, []
    for plan in plans:
        for seg in segments(plan):
            # a step's actors: the first `concurrency` to load after the last segment's work
            # (MultiID's two plans both have a step `faces`)
            mine_l = [e for s in seg for e in sorted((e for e in loaded if e["stage"] == s.name and e["t"] >= cursor),
                                                     key=lambda e: e["t"])[:pool(plan, s).concurrency]]
            actors = {(e["stage"], e["actor"]) for e in mine_l}
            mine_b = [e for e in batches if (e["stage"], e["actor"]) in actors]
            if not mine_b:
                continue
            segs.append((plan, seg, mine_l, mine_b))
            cursor = max(e["end"] for e in mine_b)
    # the binding segment: the one whose bound is lowest
    rated = []
    for plan, seg, mine_l, mine_b in segs:
        b = bound(plan, costs, specs=specs[plan.name])
        steps = [s.name for s in seg]
        rate, slowest = next((r, s) for names, r, s in b.segments if names == steps)
        rated.append((rate, slowest, plan, seg, mine_l, mine_b))
    rate, slowest, plan, seg, mine_l, mine_b = min(rated, key=lambda x: x[0])
    ends = sorted((e["end"], e["rows"]) for e in mine_b if e["stage"] == slowest)
    total = sum(r for _, r in ends)
    done, t10, t90, r10, r90 = 0, None, None, 0, 0
    for t, r in ends:
        done += r
        if t10 is None and done >= 0.1 * total:
            t10, r10 = t, done
        if t90 is None and done >= 0.9 * total:
            t90, r90 = t, done
    measured = (r90 - r10) / (t90 - t10) * scale * 3600 if t90 and t90 > t10 else float("nan")

    # time to all pools busy, per segment, less the zero-overhead schedule's
    overheads = []
    for _, _, plan_k, seg_k, l_k, b_k in rated:
        n_rows = sum(e["rows"] for e in b_k if e["stage"] == seg_k[0].name)
        pools = [(s.name, pool(plan_k, s).concurrency, pool(plan_k, s).batch_size, pool(plan_k, s).num_gpus or 1.0)
                 for s in seg_k]
        step_of = {s.name: s for s in seg_k}
        t_loaded = max(e["t"] for e in l_k)
        # the ideal's actors load when the measured ones did: a pool that started early gives both
        # the same head start, and the difference is the scheduling's alone
        ready = {s.name: sorted(e["t"] - t_loaded for e in l_k if e["stage"] == s.name) for s in seg_k}
        ideal = ideal_schedule(pools, n_rows, lambda st, k, u: costs[step_of[st].role].batch_seconds(
            k, step_of[st].kwargs, u) * scale, ready)
        measured_busy, ideal_busy, per_step = 0.0, 0.0, {}
        for s in seg_k:
            firsts = sorted(min(e["start"] for e in b_k if e["stage"] == s.name and e["actor"] == a)
                            for a in {e["actor"] for e in b_k if e["stage"] == s.name})
            k = len(ideal["busy"][s.name])  # actors the ideal schedule puts to work at all
            if k:
                mine = (firsts[k - 1] if len(firsts) >= k else float("inf")) - t_loaded
                measured_busy = max(measured_busy, mine)
                ideal_busy = max(ideal_busy, ideal["busy"][s.name][k - 1])
                per_step[s.name] = {"first": firsts[0] - t_loaded if firsts else None, "all": mine,
                                    "ideal_first": ideal["busy"][s.name][0], "ideal_all": ideal["busy"][s.name][k - 1],
                                    "loaded": max(e["t"] for e in l_k if e["stage"] == s.name) - t_loaded}
        overheads.append({"plan": plan_k.name, "steps": [s.name for s in seg_k], "rows": n_rows,
                          "busy_seconds": measured_busy, "ideal_busy_seconds": ideal_busy,
                          "overhead_seconds": measured_busy - ideal_busy, "ideal_seconds": ideal["end"],
                          "per_step": per_step,
                          "loaded": t_loaded})

    counts, rejects = {}, {}
    for ds in sorted(p.name for p in out.iterdir() if (p / "dataset.json").exists()):
        info = json.loads((out / ds / "dataset.json").read_text())
        counts[ds] = info["counts"]["samples"]
        rej = list((out / ds / "rejects").glob("*.parquet"))
        if rej:
            rejects[ds] = pd.concat(pd.read_parquet(f) for f in rej)["reason"].value_counts().to_dict()
    commits = sorted(f.stat().st_mtime for ds in counts for f in (out / ds / "manifest").glob("*.parquet"))
    first_loaded = min(e["t"] for e in loaded)
    samples = counts.get(plans[-1].schema.name, 0)
    whole = samples / (commits[-1] - first_loaded) * scale * 3600 if commits else float("nan")
    ideal_whole = sum(o["ideal_seconds"] for o in overheads)
    return {"pipeline": name, "bound_per_hour": rate * 3600, "bottleneck": slowest, "measured_per_hour": measured,
            "ratio": measured / (rate * 3600), "time_to_busy": max(o["overhead_seconds"] for o in overheads),
            "segments": overheads, "samples": counts, "rejects": rejects, "time_scale": scale,
            "whole_run_per_hour": whole,
            "ideal_whole_per_hour": samples / ideal_whole * scale * 3600 if ideal_whole else float("nan"),
            "wall_seconds": result["end"] - result["start"],
            "pools": {s.name: [pool(p, s).concurrency, pool(p, s).num_gpus] for p in plans for s in p.model_steps}}


# -- hand-written splits (pools: fixed) ------------------------------------------------------------
def hand_splits(plan, gpus: int, costs) -> list[dict]:
    """Every `pools: fixed` split of one (concurrency, num_gpus) per role that fits on `gpus`
    devices: roles with 5%+ of the per-sample cost take 1..2*gpus actors of a whole or half device
    (not below min_gpus), the light ones one actor of a quarter (the gpu profiles' habit). Best
    first, by bound."""
    steps = [s for s in plan.model_steps if s.spec.num_gpus]
    per_role: dict[str, float] = {}
    for s in steps:
        per_role[s.role] = per_role.get(s.role, 0.0) + costs[s.role].per_sample_seconds(s.spec.batch_size, s.kwargs)
    total = sum(per_role.values())
    options = {}
    for role, c in per_role.items():
        if c >= 0.05 * total:
            shares = [u for u in SHARES[:2] if u >= costs[role].min_gpus]
            options[role] = [(k, u) for u in shares for k in range(1, int(2 * gpus / u) // 2 + 1)]
        else:
            options[role] = [(1, u) for u in SHARES[2:] if u >= costs[role].min_gpus] or [(1, costs[role].min_gpus)]
    roles = sorted(options)
    out = []
    for choice in itertools.product(*(options[r] for r in roles)):
        pick = dict(zip(roles, choice))
        items = [u for s in steps for _ in range(pick[s.role][0]) for u in [pick[s.role][1]]]
        if sum(items) > gpus + 1e-9 or not packs(items, gpus):
            continue
        specs = {s.name: s.spec.model_copy(update={"concurrency": pick[s.role][0], "num_gpus": pick[s.role][1]})
                 for s in steps}
        out.append({"roles": pick, "bound_per_hour": bound(plan, costs, specs=specs).samples_per_hour})
    return sorted(out, key=lambda x: -x["bound_per_hour"])


def fixed_overrides(pick: dict) -> list[str]:
    return ["pools=fixed"] + [f"{role}.{f}={v}" for role, (k, u) in pick.items()
                              for f, v in (("concurrency", k), ("num_gpus", u))]


def print_run(r: dict, gpus: int, label: str = "") -> None:
    name = r["pipeline"] + label
    print(f"{name} simulated {gpus} GPUs: {r['measured_per_hour']:.0f} samples/h, bound {r['bound_per_hour']:.0f} "
          f"samples/h, ratio {r['ratio']:.2f}", flush=True)
    print(f"{name} time to all pools busy: {r['time_to_busy']:.1f} s", flush=True)
    seg = max(r["segments"], key=lambda o: o["overhead_seconds"])
    print(f"  slowest pool {r['bottleneck']}; busy {seg['busy_seconds']:.1f} s after load, of which the ideal "
          f"schedule needs {seg['ideal_busy_seconds']:.1f} s ({'/'.join(seg['steps'])}); time scale {r['time_scale']:g}; "
          f"whole run {r['whole_run_per_hour']:.0f} samples/h vs zero-overhead {r['ideal_whole_per_hour']:.0f}; "
          f"samples {r['samples']}; rejects {r['rejects'] or 'none'}; {r['wall_seconds']:.0f} s wall", flush=True)
    print(f"  pools {r['pools']}", flush=True)
    print("  per step, s after load (first batch / every actor busy; ideal): " + "; ".join(
        f"{k} {v['first']:.1f}/{v['all']:.1f} ({v['ideal_first']:.1f}/{v['ideal_all']:.1f})"
        for k, v in seg["per_step"].items()), flush=True)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pipelines", default=",".join(datasets()))
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--cpus", type=int, default=64, help="Ray's logical CPUs (the actors hold one each)")
    p.add_argument("--object-store-gb", type=float, help="Ray's object store (default: the dataset spec's, else "
                                                         "Ray's own)")
    p.add_argument("--timeline", help="a folder: each run's Ray timeline (ray.timeline) as <pipeline>-<run>.json")
    p.add_argument("--costs", help="a cost table YAML over the defaults (runtime/costs.py)")
    p.add_argument("--time-scale", type=float, help="one scale for every pipeline (default: per dataset spec)")
    p.add_argument("--n", type=int, help="inputs per pipeline (default: per dataset spec)")
    p.add_argument("--side", type=int, default=1024)
    p.add_argument("--splits", action="store_true", help="DIP: auto against the best hand-written split, "
                                                         "default table and VLM 5x slower")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=VALUE",
                   help="a config override for every run (repeatable), e.g. ray.prewarm_workers=2")
    p.add_argument("--json")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: one run in this process
    args = p.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(one_run(json.loads(args.one))), flush=True)
        return {}
    if args.timeline:
        Path(args.timeline).mkdir(parents=True, exist_ok=True)
    report = {"gpus": args.gpus, "runs": [], "splits": []}
    with tempfile.TemporaryDirectory(prefix="sf-simulated-") as tmp:
        for name in [x for x in args.pipelines.split(",") if x]:
            n = args.n or get_dataset(name).simulated.n
            scale = args.time_scale or get_dataset(name).simulated.time_scale
            r = run(name, args, args.costs, list(args.overrides), Path(tmp) / name, n, scale)
            print_run(r, args.gpus)
            report["runs"].append(r)
        if args.splits:
            report["splits"] = compare_splits(args, Path(tmp) / "splits")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return report


def compare_splits(args, work: Path) -> list[dict]:
    """DIP: auto against the best hand-written split, measured, for the default table and the VLM
    5x slower."""
    import yaml

    out = []
    base = load_costs(args.costs)
    for label, table in (("default", base), ("vlm x5", slower(base, "vlm", 5))):
        path = work / f"costs-{label.replace(' ', '')}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump({role: {"per_sample": c.per_sample, "per_batch": c.per_batch}
                                        for role, c in table.items()}))
        _, (plan,), _ = plans_for("dip", ["pools=fixed"], args.gpus, {})
        best = hand_splits(plan, args.gpus, table)[0]
        sim = get_dataset("dip").simulated
        n, scale = args.n or sim.n, args.time_scale or sim.time_scale
        auto = run("dip", args, str(path), [f"cost_table={path}", *args.overrides], work / f"auto-{len(out)}", n, scale)
        hand = run("dip", args, str(path), fixed_overrides(best["roles"]) + args.overrides, work / f"hand-{len(out)}",
                   n, scale)
        ratio = auto["measured_per_hour"] / hand["measured_per_hour"]
        print(f"dip {label} table: auto {auto['measured_per_hour']:.0f} samples/h (bound {auto['bound_per_hour']:.0f}), "
              f"best hand-written split {best['roles']} {hand['measured_per_hour']:.0f} samples/h (bound "
              f"{best['bound_per_hour']:.0f}); auto / best hand {ratio:.2f}", flush=True)
        out.append({"table": label, "auto": auto, "hand": hand, "best_hand": best, "ratio": ratio})
    return out


if __name__ == "__main__":
    main()
