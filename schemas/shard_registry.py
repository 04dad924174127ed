"""The bookkeeping a write's tasks share: shard numbers, key owners, the error budget. A module of
its own that imports nothing heavy, so the actor's process starts in a fraction of a second (the
writer's module pulls in Ray Data and pyarrow)."""
from __future__ import annotations

from collections import Counter

import ray


UNREADABLE = "no input could be read"  # how a violation of unreadable inputs begins, after its stage


@ray.remote(num_cpus=0, max_restarts=0)
class ShardRegistry:
    """One per write, on the driver's node: the run's bookkeeping that write tasks share.

    Idempotent retries: Ray retries a write task whose process died with the same input blocks and
    the same task index, so a task's shards are numbered by (task, group) once and for all, and a
    key belongs to the first task that claims it (a retry re-claims its own keys; another task
    claiming one holds a duplicate input). The error budget sums each task's last report."""

    def __init__(self, first_index: int):
        self.next = first_index
        self.indices: dict[tuple[int, int], int] = {}
        self.owner: dict[str, int] = {}
        self.reports: dict[int, dict] = {}
        self.violation: str | None = None

    def shard_indices(self, task: int, groups: int) -> list[int]:
        """The shard numbers of a task's groups 0..groups-1, the same on every attempt."""
        out = []
        for g in range(groups):
            if (task, g) not in self.indices:
                self.indices[(task, g)] = self.next
                self.next += 1
            out.append(self.indices[(task, g)])
        return out

    def claim(self, task: int, keys: list[str]) -> list[int | None]:
        """Per key: None when it is this task's, else the task that holds it."""
        out = []
        for k in keys:
            owner = self.owner.setdefault(k, task)
            out.append(None if owner == task else owner)
        return out

    def report(self, task: int, rows: dict, errors: dict, max_fraction: float, min_rows: int,
               unreadable: dict | None = None) -> str | None:
        """This task's rows in and failures per stage; the first stage over budget, described."""
        self.reports[task] = {"rows": rows, "errors": errors, "unreadable": unreadable or {}}
        self.unreadable(min_rows)
        total_rows, total_errors = Counter(), Counter()
        for r in self.reports.values():
            total_rows.update(r["rows"])
            for stage, per_reason in r["errors"].items():
                total_errors[stage] += sum(n for n, _ in per_reason.values())
        for stage, n in total_rows.items():
            failed = total_errors.get(stage, 0)
            if n >= min_rows and failed > max_fraction * n and self.violation is None:
                reasons = Counter()
                example = {}
                for r in self.reports.values():
                    for reason, (count, ex) in r["errors"].get(stage, {}).items():
                        reasons[reason] += count
                        example.setdefault(reason, ex)
                reason, count = reasons.most_common(1)[0]
                self.violation = (f"stage {stage}: {failed} of {n} rows failed ({failed / n:.0%} > max_error_fraction "
                                  f"{max_fraction:g}); most often {reason} ({count}), e.g. {example[reason]}")
        return self.violation

    def unreadable(self, min_rows: int = 1) -> str | None:
        """A stage that could read none of its (at least min_rows) inputs: a source in the wrong
        place or without credentials, not bad data; the run stops naming an example."""
        rows, bad, example = Counter(), Counter(), {}
        for r in self.reports.values():
            rows.update(r["rows"])
            for stage, per_reason in r["unreadable"].items():
                for reason, (count, ex) in per_reason.items():
                    bad[(stage, reason)] += count
                    example.setdefault(stage, ex)
        for stage, n in rows.items():
            reasons = {reason: c for (s, reason), c in bad.items() if s == stage}
            if n >= min_rows and sum(reasons.values()) == n and self.violation is None:
                self.violation = (f"stage {stage}: {UNREADABLE} ({n} of {n}: "
                                  f"{', '.join(f'{r} {c}' for r, c in sorted(reasons.items()))}), e.g. {example[stage]}; "
                                  f"check the source's path and the filesystem's credentials")
        return self.violation

    def failed(self) -> str | None:
        return self.violation
