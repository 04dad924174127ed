"""MultiID retrieval and reference-bank construction against bare baselines, in one run.

    python benchmarks/multiid.py --scale [...]   # memory of the whole pipeline at N and 10N photos:
                                                # benchmarks/multiid_scale.py
    python benchmarks/multiid.py [--faces 1000000] [--centers 3000] [--chunk 65536]
        [--identities 3000] [--per-identity 400] [--pooled-identities 50] [--quick] [--json out.json]

Retrieval: --faces random unit 512-d float32 faces against --centers random unit centers, --chunk
faces at a time, each chunk through exactly what the pipeline calls: stages.retrieval.similarities
then stages.retrieval.top1 (best identity, similarity, margin). Faces are generated per chunk
outside the timed region. The baseline is this machine's float32 matmul throughput measured in the
same run with a plain `a @ b` of the same shapes (chunk x 512 times 512 x centers). The machine may
be shared, so the ratio's baseline is taken chunk by chunk: the same `a @ b` on each chunk's faces,
timed next to the pipeline's calls (which side goes first alternates); a best-of --matmul-repeats
before and after is printed as the machine's peak. The retrieval's effective rate is
2 * faces * 512 * centers / retrieval seconds and the ratio is retrieval / matmul; the retrieval
time is split into the similarities (matmul) and the top1 part. Two alternatives to top1's full
np.argsort are timed on the same similarity matrices and checked against top1's output: they live
only in this file (labelled "PROPOSED") and are NOT what the pipeline runs.

Bank: --identities x --per-identity embeddings (per identity a random unit center and unit vectors
at cosine U(--center-cos) to it, with --outliers of them replaced by random unit vectors), timed
through one stages.bank.build_bank(eps, min_samples, min_references) call, i.e. one DBSCAN (cosine)
per identity; then, for the ratio, build_bank against a bare loop of the same per-identity DBSCAN
calls (no bookkeeping), alternating block by block (--block identities) so that both sides see the
same machine load. The naive alternative, ONE sklearn DBSCAN over the pooled embeddings, is brute
force with the cosine metric (O(n^2) distances, every neighbourhood list held in memory):
infeasible at 1.2M points, so it is timed on the first --pooled-identities identities against
build_bank on the same subsample (alternating, best of --repeats), and its full-size time is
extrapolated quadratically (an estimate, labelled as such).

Nothing asserts a time; peak RSS (ru_maxrss) is reported after each part.
"""
from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import numpy as np  # noqa: E402
from sklearn.cluster import DBSCAN  # noqa: E402

from stages.bank import build_bank, cluster_identity  # noqa: E402
from stages.retrieval import similarities, top1  # noqa: E402

DIM = 512
GB = 1e9


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB  # Linux: KiB


def unit_rows(rng: np.random.Generator, n: int, d: int = DIM) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


# -- proposed top1 alternatives (benchmark-local; the pipeline runs stages.retrieval.top1) ---------
def top1_argpartition(sim: np.ndarray):
    """PROPOSED, not the pipeline's: the top two per row by np.argpartition (O(k) per row)."""
    n, k = sim.shape
    if k < 2:
        return top1(sim)
    part = np.argpartition(sim, k - 2, axis=1)[:, -2:]  # [:, 1] is the max, [:, 0] the second
    r = np.arange(n)
    best_idx = part[:, 1]
    best = sim[r, best_idx]
    second = sim[r, part[:, 0]]
    return best_idx, best.astype(np.float32), (best - second).astype(np.float32)


def top1_argmax2(sim: np.ndarray):
    """PROPOSED, not the pipeline's: argmax, then the max with the best masked out (two passes
    over the matrix, O(n) extra memory). Writes -inf into `sim` and restores it."""
    n, k = sim.shape
    if k < 2:
        return top1(sim)
    r = np.arange(n)
    best_idx = sim.argmax(axis=1)
    best = sim[r, best_idx].copy()
    sim[r, best_idx] = -np.inf
    second = sim.max(axis=1)
    sim[r, best_idx] = best
    return best_idx, best.astype(np.float32), (best - second).astype(np.float32)


VARIANTS = {"argpartition": top1_argpartition, "argmax2": top1_argmax2}


# -- retrieval ---------------------------------------------------------------------------------
def matmul_gflops(chunk: int, k: int, repeats: int, seed: int) -> tuple[float, float]:
    """(GFLOP/s, best seconds) of a plain float32 `a @ b`, a [chunk, 512], b [512, k]."""
    rng = np.random.default_rng([seed, 1])
    a = unit_rows(rng, chunk)
    b = np.ascontiguousarray(unit_rows(rng, k).T)
    a @ b  # warm-up (thread pool start, page faults of the output)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        c = a @ b
        times.append(time.perf_counter() - t0)
        del c
    best = min(times)
    return 2.0 * chunk * DIM * k / best / GB, best


def bare_matmul(a: np.ndarray, b: np.ndarray) -> float:
    t0 = time.perf_counter()
    c = a @ b
    s = time.perf_counter() - t0
    del c
    return s


def retrieval(n_faces: int, centers: np.ndarray, chunk: int, seed: int, variants: bool) -> dict:
    bt = np.ascontiguousarray(np.asarray(centers, np.float32).T)  # the bare side's [512, k]
    sim_s = top1_s = bare_s = 0.0
    alt_s = {name: 0.0 for name in VARIANTS}
    mismatch = {name: 0 for name in VARIANTS}
    for ci, start in enumerate(range(0, n_faces, chunk)):
        faces = unit_rows(np.random.default_rng([seed, 2, ci]), min(chunk, n_faces - start))
        if ci % 2:
            bare_s += bare_matmul(faces, bt)
        t0 = time.perf_counter()
        sim = similarities(faces, centers)
        t1 = time.perf_counter()
        ids, best, margin = top1(sim)
        t2 = time.perf_counter()
        if ci % 2 == 0:
            bare_s += bare_matmul(faces, bt)
        sim_s += t1 - t0
        top1_s += t2 - t1
        ids = ids.copy()  # top1's ids are a view of its [n, k] argsort: let that go before the variants
        if variants:
            for name, fn in VARIANTS.items():
                t0 = time.perf_counter()
                a_ids, a_best, a_margin = fn(sim)
                alt_s[name] += time.perf_counter() - t0
                mismatch[name] += int(((a_ids != ids) | (a_best != best) | (a_margin != margin)).sum())
        del faces, sim, ids, best, margin
    return {"bare_matmul_seconds": bare_s, "similarities_seconds": sim_s, "top1_seconds": top1_s, "seconds": sim_s + top1_s,
            "alt_top1_seconds": alt_s if variants else {}, "alt_mismatched_rows": mismatch if variants else {}}


# -- bank --------------------------------------------------------------------------------------
def bank_data(identities: int, per: int, cos: tuple[float, float], outliers: float, seed: int):
    """keys, names, embeddings [identities * per, 512] float32, identity i in rows i*per..(i+1)*per."""
    emb = np.empty((identities * per, DIM), np.float32)
    n_out = int(round(outliers * per))
    for i in range(identities):
        rng = np.random.default_rng([seed, 3, i])
        c = unit_rows(rng, 1)[0]
        perp = rng.standard_normal((per, DIM), dtype=np.float32)
        perp -= np.outer(perp @ c, c)
        perp /= np.linalg.norm(perp, axis=1, keepdims=True)
        t = rng.uniform(cos[0], cos[1], (per, 1)).astype(np.float32)
        block = t * c + np.sqrt(1 - t * t) * perp
        if n_out:
            block[rng.choice(per, n_out, replace=False)] = unit_rows(rng, n_out)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        emb[i * per:(i + 1) * per] = block
    names, keys = [], []
    for i in range(identities):
        name = f"id{i:06d}"  # sorted order == generation order
        names += [name] * per
        keys += [f"{name}/{j:04d}" for j in range(per)]
    return keys, names, emb


def time_build_bank(keys, names, emb, eps, min_samples, min_references) -> tuple[float, dict]:
    t0 = time.perf_counter()
    bank = build_bank(keys, names, emb, eps=eps, min_samples=min_samples, min_references=min_references)
    s = time.perf_counter() - t0
    refs = sum(len(i.reference_keys) for i in bank.identities)
    return s, {"identities": len(bank.identities), "references": refs,
               "clusters": sum(i.n_clusters for i in bank.identities),
               "outliers": sum(1 for r in bank.rejects if r[1] == "outlier"),
               "too_few": sum(1 for r in bank.rejects if r[1] == "too_few_references")}


def bare_per_identity(emb: np.ndarray, per: int, eps: float, min_samples: int) -> float:
    """The same per-identity DBSCAN calls as build_bank (via cluster_identity), nothing else."""
    t0 = time.perf_counter()
    for start in range(0, len(emb), per):
        cluster_identity(emb[start:start + per], eps, min_samples)
    return time.perf_counter() - t0


def interleaved(keys, names, emb, per: int, block: int, eps, min_samples, min_references) -> tuple[float, float]:
    """(build_bank seconds, bare loop seconds) summed over blocks of `block` identities, the two
    sides alternating block by block (which goes first alternates too)."""
    bank_s = bare_s = 0.0
    for bi, start in enumerate(range(0, len(emb), block * per)):
        sl = slice(start, start + block * per)
        for side in ((0, 1) if bi % 2 == 0 else (1, 0)):
            if side == 0:
                bank_s += time_build_bank(keys[sl], names[sl], emb[sl], eps, min_samples, min_references)[0]
            else:
                bare_s += bare_per_identity(emb[sl], per, eps, min_samples)
    return bank_s, bare_s


def pooled_dbscan(emb: np.ndarray, eps: float, min_samples: int) -> tuple[float, dict]:
    t0 = time.perf_counter()
    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="cosine").fit_predict(emb)
    s = time.perf_counter() - t0
    return s, {"clusters": int(labels.max() + 1), "noise": int((labels < 0).sum())}


# -- main --------------------------------------------------------------------------------------
QUICK = {"faces": 20_000, "centers": 300, "chunk": 4096, "identities": 40, "per_identity": 100,
         "pooled_identities": 10, "matmul_repeats": 3, "block": 10, "repeats": 2}


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--scale" in argv:  # the whole pipeline's memory at N and 10N photos: benchmarks/multiid_scale.py
        from benchmarks import multiid_scale

        return multiid_scale.main([a for a in argv if a != "--scale"])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--faces", type=int, default=1_000_000)
    p.add_argument("--centers", type=int, default=3000)
    p.add_argument("--chunk", type=int, default=65_536, help="faces per similarities/top1 call")
    p.add_argument("--matmul-repeats", type=int, default=5)
    p.add_argument("--no-variants", action="store_true", help="skip the proposed top1 alternatives")
    p.add_argument("--identities", type=int, default=3000)
    p.add_argument("--per-identity", type=int, default=400)
    p.add_argument("--center-cos", type=float, nargs=2, default=(0.6, 0.8), metavar=("LO", "HI"),
                   help="cosine of an identity's embeddings to its center, uniform in [LO, HI]")
    p.add_argument("--outliers", type=float, default=0.02, help="fraction of random unit vectors per identity")
    p.add_argument("--pooled-identities", type=int, default=50,
                   help="identities in the subsample of the pooled-DBSCAN comparison")
    p.add_argument("--block", type=int, default=200, help="identities per block of the bank/bare alternation")
    p.add_argument("--repeats", type=int, default=3, help="best of, for the pooled-DBSCAN subsample")
    p.add_argument("--eps", type=float, default=0.5)
    p.add_argument("--min-samples", type=int, default=2)
    p.add_argument("--min-references", type=int, default=2)
    p.add_argument("--skip-retrieval", action="store_true")
    p.add_argument("--skip-bank", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help=f"small sizes, under 30 s: {QUICK}")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            if getattr(args, name) == p.get_default(name):
                setattr(args, name, value)

    from threadpoolctl import threadpool_info
    blas = [f"{i.get('internal_api')}x{i.get('num_threads')}" for i in threadpool_info() if i.get("user_api") == "blas"]
    meta = {k: v for k, v in vars(args).items() if k not in ("json",)}
    meta["blas"] = blas
    results: dict = {"meta": meta}
    print(f"BLAS: {', '.join(blas) or 'unknown'}", flush=True)

    if not args.skip_retrieval:
        n, k, chunk = args.faces, args.centers, min(args.chunk, args.faces)
        before, _ = matmul_gflops(chunk, k, args.matmul_repeats, args.seed)
        print(f"matmul {chunk} x {DIM} @ {DIM} x {k} before: {before:.1f} GFLOP/s", flush=True)
        centers = unit_rows(np.random.default_rng([args.seed, 4]), k)
        r = retrieval(n, centers, chunk, args.seed, not args.no_variants)
        after, _ = matmul_gflops(chunk, k, args.matmul_repeats, args.seed)
        flop = 2.0 * n * DIM * k
        gflops = flop / r["bare_matmul_seconds"] / GB
        print(f"matmul after: {after:.1f} GFLOP/s (peak, best of before/after: {max(before, after):.1f}); "
              f"interleaved with the retrieval chunk by chunk: {gflops:.1f} GFLOP/s", flush=True)
        r.update(matmul_gflops_before=before, matmul_gflops_after=after, matmul_gflops_peak=max(before, after))
        eff = flop / r["seconds"] / GB
        r.update(faces=n, centers=k, chunk=chunk, matmul_gflops=gflops, effective_gflops=eff,
                 ratio=eff / gflops, faces_per_s=n / r["seconds"],
                 matmul_faces_per_s=gflops * GB / (2.0 * DIM * k),
                 similarities_gflops=flop / r["similarities_seconds"] / GB,
                 similarities_fraction=r["similarities_seconds"] / r["seconds"],
                 top1_fraction=r["top1_seconds"] / r["seconds"], peak_rss_gb=peak_rss_gb())
        results["retrieval"] = r
        print(f"\nretrieval: {n} faces x {k} centers, chunks of {chunk}")
        print(f"{'name':<34}{'baseline':>12}{'pipeline':>12}{'ratio':>8}")
        print(f"{'GFLOP/s (matmul vs retrieval)':<34}{gflops:>12.1f}{eff:>12.1f}{eff / gflops:>8.3f}")
        print(f"{'faces/s':<34}{r['matmul_faces_per_s']:>12.0f}{r['faces_per_s']:>12.0f}{eff / gflops:>8.3f}")
        print(f"time: {r['seconds']:.2f} s = similarities {r['similarities_seconds']:.2f} s "
              f"({100 * r['similarities_fraction']:.1f} %, {r['similarities_gflops']:.1f} GFLOP/s) + "
              f"top1 {r['top1_seconds']:.2f} s ({100 * r['top1_fraction']:.1f} %)")
        for name, s in r["alt_top1_seconds"].items():
            total = r["similarities_seconds"] + s
            r.setdefault("alt", {})[name] = {
                "top1_seconds": s, "top1_speedup": r["top1_seconds"] / s, "faces_per_s": n / total,
                "ratio": flop / total / GB / gflops, "top1_fraction": s / total,
                "mismatched_rows": r["alt_mismatched_rows"][name]}
            a = r["alt"][name]
            print(f"  PROPOSED top1_{name:<13} (benchmark-local): {s:.2f} s, {a['top1_speedup']:.1f}x faster "
                  f"than top1; retrieval {a['faces_per_s']:.0f} faces/s, ratio {a['ratio']:.3f}, "
                  f"top1 {100 * a['top1_fraction']:.1f} % of time; rows differing from top1: {a['mismatched_rows']}")
        print(f"peak RSS so far: {r['peak_rss_gb']:.2f} GB", flush=True)
        gc.collect()

    if not args.skip_bank:
        per, ids = args.per_identity, args.identities
        t0 = time.perf_counter()
        keys, names, emb = bank_data(ids, per, tuple(args.center_cos), args.outliers, args.seed)
        gen_s = time.perf_counter() - t0
        print(f"\nbank: {ids} identities x {per} = {len(emb)} embeddings ({emb.nbytes / GB:.2f} GB) "
              f"generated in {gen_s:.1f} s", flush=True)
        kw = dict(eps=args.eps, min_samples=args.min_samples)
        full_s, full = time_build_bank(keys, names, emb, **kw, min_references=args.min_references)
        print(f"build_bank full: {full_s:.2f} s ({len(emb) / full_s:.0f} embeddings/s, "
              f"{ids / full_s:.1f} identities/s) -> {full}", flush=True)
        il_bank_s, il_bare_s = interleaved(keys, names, emb, per, args.block, args.eps, args.min_samples,
                                           args.min_references)
        print(f"\nper-identity DBSCAN, build_bank vs bare loop, alternating in blocks of {args.block} identities:")
        print(f"{'name':<34}{'baseline':>12}{'pipeline':>12}{'ratio':>8}")
        print(f"{'embeddings/s (bare loop vs bank)':<34}{len(emb) / il_bare_s:>12.0f}{len(emb) / il_bank_s:>12.0f}"
              f"{il_bare_s / il_bank_s:>8.3f}")
        print(f"  seconds: bare {il_bare_s:.2f}, build_bank {il_bank_s:.2f} "
              f"({1000 * il_bank_s / ids:.2f} ms per identity)", flush=True)

        sub_ids = min(args.pooled_identities, ids)
        m = sub_ids * per
        sub_s = pooled_s = float("inf")
        for _ in range(args.repeats):
            s_, sub = time_build_bank(keys[:m], names[:m], emb[:m], **kw, min_references=args.min_references)
            p_, pooled = pooled_dbscan(emb[:m], **kw)
            sub_s, pooled_s = min(sub_s, s_), min(pooled_s, p_)
        est_s = pooled_s * (len(emb) / m) ** 2
        bank = {"identities": ids, "per_identity": per, "embeddings": len(emb), "generate_seconds": gen_s,
                "build_bank_seconds": full_s, "build_bank": full, "block": args.block,
                "interleaved_build_bank_seconds": il_bank_s, "interleaved_bare_loop_seconds": il_bare_s,
                "ratio_bank_over_bare_throughput": il_bare_s / il_bank_s,
                "subsample": {"identities": sub_ids, "embeddings": m, "build_bank_seconds": sub_s,
                              "build_bank": sub, "pooled_dbscan_seconds": pooled_s, "pooled_dbscan": pooled,
                              "pooled_over_build_bank": pooled_s / sub_s},
                "pooled_full_estimate_seconds": est_s}
        print(f"\nsubsample {sub_ids} identities = {m} embeddings, best of {args.repeats}:")
        print(f"{'name':<34}{'baseline':>12}{'pipeline':>12}{'ratio':>8}")
        print(f"{'seconds (pooled DBSCAN vs bank)':<34}{pooled_s:>12.2f}{sub_s:>12.2f}{'':>8}")
        print(f"{'embeddings/s':<34}{m / pooled_s:>12.0f}{m / sub_s:>12.0f}{pooled_s / sub_s:>8.2f}")
        print(f"  pooled DBSCAN: {pooled}; build_bank: {sub}")
        print(f"  pooled DBSCAN at {len(emb)} embeddings, ESTIMATED (x (n/m)^2): {est_s:.0f} s "
              f"({est_s / 3600:.1f} h) vs build_bank {full_s:.1f} s", flush=True)
        del keys, names, emb
        bank["peak_rss_gb"] = peak_rss_gb()
        results["bank"] = bank
        print(f"peak RSS so far: {bank['peak_rss_gb']:.2f} GB")

    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float))
    return results


if __name__ == "__main__":
    main()
