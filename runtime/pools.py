"""Actor pools from the cost table: the analytic bound of a plan's throughput, and `pools: auto`,
which splits the cluster's GPUs among the model steps in proportion to their per-sample cost.

The bound: a model step's pool delivers actors x share x batch / batch seconds samples per second
(runtime/costs.py: a share u of a device runs 1/u as long), and a streaming segment of the DAG
runs at the rate of its slowest pool when every row reaches every step (pass rate 1, the
simulated benchmark's world). A gather step is a barrier: the segments before and after it run
one after the other, so a plan's seconds per input row are the sum of its segments' 1 / rate.

The split, per segment (the pools of one segment are alive together): find the highest rate T
for which every GPU step gets the GPUs T x its per-sample cost needs, each pool cut into actors
of one share 1, 1/2, 1/4, ... no smaller than the role's min_gpus (powers of two, so Ray's
first-fit placement of fractional GPUs packs them whatever the order), and all shares pack into
the cluster's devices. Then the GPUs left over go to the pools that do not bind (progressive
filling, max-min): the binding pools keep their cut, the others are raised together, round by
round, up to HEADROOM x T, in actors no smaller than they had. Steps of roles the config runs on
CPUs (num_gpus 0) keep their pools. An actor of share u holds u x the role's num_cpus: a pool's
CPUs follow its GPUs, so cutting a pool into many small actors does not take the CPUs the CPU
stages run on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from runtime.costs import Cost
from runtime.steps import Gather, Model

SHARES = (1.0, 0.5, 0.25, 0.125, 0.0625)  # a GPU actor's share of one device
# pools: auto gives a light pool spare GPUs up to this multiple of its segment's rate: at twice the
# rate a pool is idle half the time already, and more actors are only more processes and models
HEADROOM = 2.0


@dataclass(frozen=True)
class Pool:
    step: str
    role: str
    actors: int
    gpus: float  # per actor; 0: a CPU pool
    batch: int

    @property
    def total_gpus(self) -> float:
        return self.actors * self.gpus


def segments(plan) -> list[list]:
    """The plan's model steps, cut at its gather steps (barriers)."""
    out, current = [], []
    for s in plan.steps:
        if isinstance(s, Gather):
            out.append(current)
            current = []
        elif isinstance(s, Model):
            current.append(s)
    return [seg for seg in out + [current] if seg]


def pool_of(s, spec=None) -> Pool:
    spec = spec or s.spec
    return Pool(s.name, s.role, spec.concurrency, spec.num_gpus, spec.batch_size)


def capacity(pool: Pool, cost: Cost, step_args: dict) -> float:
    """Samples per second of a pool whose every actor is busy."""
    share = pool.gpus or 1.0  # a CPU pool's actor runs at its own speed
    return pool.actors * pool.batch / cost.batch_seconds(pool.batch, step_args, share)


@dataclass
class Bound:
    capacities: dict[str, float]  # step -> samples/s
    segments: list[tuple[list[str], float, str]]  # (steps, samples/s, the bottleneck step)

    @property
    def seconds_per_row(self) -> float:
        return sum(1.0 / rate for _, rate, _ in self.segments)

    @property
    def samples_per_hour(self) -> float:
        return 3600.0 / self.seconds_per_row if self.segments else float("inf")


def bound(plan, costs: dict[str, Cost], pools: dict[str, Pool] | None = None, specs: dict | None = None) -> Bound:
    """The plan's analytic throughput for its pools (default: the run's `specs`, else the config's)."""
    caps, segs = {}, []
    for seg in segments(plan):
        for s in seg:
            pool = (pools or {}).get(s.name) or pool_of(s, (specs or {}).get(s.name))
            caps[s.name] = capacity(pool, costs[s.role], s.kwargs)
        slowest = min(seg, key=lambda s: caps[s.name])
        segs.append(([s.name for s in seg], caps[slowest.name], slowest.name))
    return Bound(caps, segs)


def _cut(need: float, cost: Cost, smallest: float = 0.0) -> tuple[int, float]:
    """(actors, share) giving at least `need` GPUs in the fewest GPUs, then the fewest actors, of
    shares no smaller than the role's min_gpus and `smallest`."""
    options = []
    for u in SHARES:
        if u + 1e-9 >= max(cost.min_gpus, smallest):
            k = max(1, math.ceil(need / u - 1e-9))
            options.append((k * u, k, u))
    _, k, u = min(options, key=lambda o: (round(o[0], 9), o[1]))
    return k, u


def packs(items: list[float], devices: int) -> bool:
    """First-fit decreasing of actor shares into `devices` GPUs of capacity 1."""
    free = [1.0] * devices
    for x in sorted(items, reverse=True):
        for i, f in enumerate(free):
            if x <= f + 1e-9:
                free[i] = f - x
                break
        else:
            return False
    return True


def auto_split(plan, gpus: float, costs: dict[str, Cost]) -> dict[str, Pool]:
    """step -> Pool for every GPU model step, from the cluster's `gpus` (see the module doc)."""
    devices = int(gpus + 1e-9)
    split = {}
    for seg in segments(plan):
        gpu_steps = [s for s in seg if s.spec.num_gpus]
        if not gpu_steps:
            continue
        if devices < 1:
            raise ValueError(f"{plan.name}: pools: auto needs at least one GPU in the cluster, found {gpus:g}")
        per_sample = {s.name: costs[s.role].per_sample_seconds(s.spec.batch_size, s.kwargs) for s in gpu_steps}
        role = {s.name: costs[s.role] for s in gpu_steps}
        frozen: dict[str, tuple[int, float]] = {}  # the pools that bind, at the cut they bind with
        smallest: dict[str, float] = {}

        def cuts(rate: float) -> dict[str, tuple[int, float]]:
            return {n: frozen.get(n) or _cut(rate * c, role[n], smallest.get(n, 0.0)) for n, c in per_sample.items()}

        def fits(rate: float) -> bool:
            return packs([u for k, u in cuts(rate).values() for _ in range(k)], devices)

        if not fits(0.0):
            raise ValueError(f"{plan.name}: {len(gpu_steps)} GPU pools do not fit on {devices} GPU(s) even at "
                             f"their smallest shares")
        lo, hi = _highest(fits, 0.0, devices / sum(per_sample.values()))  # hi: every GPU busy, no rounding
        best, top = cuts(lo), HEADROOM * lo
        # progressive filling: the pools that bind at the highest rate keep their cut, and the
        # others share what is left, up to HEADROOM x that rate, round by round, in actors no
        # smaller than they had (more of a small share is more processes, not more speed). A pool
        # cut to just above the segment's rate stalls it at every hand-off's jitter (IAPO's
        # grounding at 1.08x its planner), while a GPU left over does nothing at all.
        smallest.update({n: u for n, (k, u) in best.items()})
        while lo < top:
            above = cuts(hi)
            frozen.update({n: c for n, c in best.items() if n not in frozen and above[n] != c})
            if len(frozen) == len(per_sample):
                break
            if fits(top):
                best = cuts(top)
                break
            lo, hi = _highest(fits, lo, top)
            best = cuts(lo)
        for s in gpu_steps:
            k, u = best[s.name]
            split[s.name] = Pool(s.name, s.role, k, u, s.spec.batch_size)
    return split


def _highest(fits, lo: float, hi: float) -> tuple[float, float]:
    """Bisect [lo, hi] (fits(lo) holds) to the highest rate that fits, and one just above it."""
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo, hi


def split_specs(plan, split: dict[str, Pool]) -> dict:
    """step -> its ModelSpec with the split's actors and share, and CPUs in proportion to the
    share (of the spec as configured)."""
    return {s.name: s.spec.model_copy(update={"concurrency": split[s.name].actors, "num_gpus": split[s.name].gpus,
                                              "num_cpus": s.spec.num_cpus * split[s.name].gpus})
            for s in plan.steps if s.name in split}


def size_pools(plan, gpus: float, log=print, costs: dict[str, Cost] | None = None) -> dict:
    """pools: auto: each GPU step's ModelSpec for a cluster of `gpus` GPUs, from the cost table
    (the config's cost_table over the roles' own costs); the split and its bound go to `log`."""
    from runtime.costs import load_costs

    costs = costs or load_costs(getattr(plan.cfg, "cost_table", None))
    unknown = sorted({s.role for s in plan.model_steps if s.role not in costs})
    if unknown:
        raise ValueError(f"{plan.name}: pools: auto: the cost table has no role(s) {unknown}")
    split = auto_split(plan, gpus, costs)
    log(describe_split(plan, split, gpus, costs))
    return split_specs(plan, split)


def held(plan, specs: dict | None = None) -> list[tuple[list[str], float, float]]:
    """Per segment: its model steps, and the CPUs and GPUs their actors hold together."""
    out = []
    for seg in segments(plan):
        sp = [(specs or {}).get(s.name) or s.spec for s in seg]
        out.append(([s.name for s in seg], sum(x.concurrency * x.num_cpus for x in sp),
                    sum(x.concurrency * x.num_gpus for x in sp)))
    return out


def shortfall(plan, cpus: float, gpus: float, specs: dict | None = None) -> str | None:
    """What a segment's pools hold beyond the cluster (CPUs: one must stay free for the CPU
    stages), said in one line; None when they fit. Fixed-size pools that do not fit never start."""
    for steps, c, g in held(plan, specs):
        if c > cpus - 1 + 1e-9 or g > gpus + 1e-9:
            return (f"{plan.name}: the pools of {', '.join(steps)} hold {c:g} CPUs and {g:g} GPUs; the cluster has "
                    f"{cpus:g} CPUs (one kept for the CPU stages) and {gpus:g} GPUs")
    return None


def describe_split(plan, split: dict[str, Pool], gpus: float, costs: dict[str, Cost]) -> str:
    """The split as the run log and `subjectforge plan --gpus N` print it, with its bound."""
    if not split:
        return f"{plan.name}: pools: auto: no GPU steps"
    b = bound(plan, costs, split)
    lines = [f"{plan.name}: pools: auto on {gpus:g} GPU(s), bound {b.samples_per_hour:.0f} samples/h"]
    for s in plan.steps:
        if s.name in split:
            p = split[s.name]
            lines.append(f"  {s.name:<18} {s.role:<18} {p.actors:>3} x {p.gpus:g} GPU = {p.total_gpus:5.2f} GPU, "
                         f"{b.capacities[s.name] * 3600:8.0f} samples/h")
    return "\n".join(lines)
