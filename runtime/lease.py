"""One writer per dataset folder: a lease file (run id, host, pid, heartbeat) that a run takes at
start and renews while it runs.

A second run on the same folder stops at once, naming the holder. A lease whose heartbeat stopped
(its run was killed) is taken over once it is older than the timeout, at once when its process is
known dead (same host, no such pid), or at once with --force.
Object stores have no create-if-absent through pyarrow, so taking a lease is write-then-read-back:
of two runs that write at the same moment, the one whose id is read back holds it.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid

from schemas.store import DatasetDir

LEASE = "_lease.json"  # "_": readers never list it; not "_tmp-": cleanup leaves it alone


class LeaseHeld(RuntimeError):
    """Another live run writes this dataset folder."""


def dead_here(held: dict) -> bool:
    """The holder ran on this machine and its process is gone: killed, no need to wait it out."""
    if held.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(held.get("pid")), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, TypeError, ValueError):
        return False
    return False


class Lease:
    def __init__(self, out: DatasetDir, run_id: str | None = None, timeout_s: float = 120.0):
        self.out, self.timeout_s = out, timeout_s
        self.run_id = run_id or uuid.uuid4().hex
        self.path = out.sub(LEASE)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost: dict | None = None  # the lease that replaced ours, if one did

    def holder(self) -> dict | None:
        try:
            with self.out.fs.open_input_stream(self.path) as f:
                return json.loads(f.read())
        except (FileNotFoundError, OSError, ValueError):
            return None

    def _write(self) -> None:
        record = {"run_id": self.run_id, "host": socket.gethostname(), "pid": os.getpid(), "heartbeat": time.time(),
                  "timeout_s": self.timeout_s}
        self.out.write_bytes_atomic(self.path, json.dumps(record).encode())

    def acquire(self, force: bool = False) -> "Lease":
        held = self.holder()
        if held and held.get("run_id") != self.run_id and not force and not dead_here(held):
            age = time.time() - float(held.get("heartbeat", 0))
            if age < self.timeout_s:
                raise LeaseHeld(f"{self.out.path} is being written by run {held.get('run_id')} on host "
                                f"{held.get('host')} pid {held.get('pid')} (heartbeat {age:.0f} s ago); wait for it, "
                                f"or take over with --force if that run is dead")
        self.out.fs.create_dir(self.out.path, recursive=True)
        self._write()
        time.sleep(min(0.2, self.timeout_s / 10))  # a concurrent writer's record lands, or not, by now
        now = self.holder()
        if not now or now.get("run_id") != self.run_id:
            raise LeaseHeld(f"{self.out.path}: run {now and now.get('run_id')} took the lease at the same moment")
        self._thread = threading.Thread(target=self._beat, name=f"lease {self.out.dataset}", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.timeout_s / 4):
            now = self.holder()
            if now and now.get("run_id") != self.run_id:  # taken over (--force): stop renewing
                self.lost = now
                return
            self._write()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        now = self.holder()
        if now and now.get("run_id") == self.run_id:
            self.out.fs.delete_file(self.path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
