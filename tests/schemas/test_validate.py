"""validate() catches each corruption of the data contract, one test each."""
import io
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from schemas import validate
from schemas.contract import Member, encode_member
from tests.helpers import synthetic_rows, write_rows


@pytest.fixture
def dataset(ray_local, tmp_path):
    out = tmp_path / "dip"
    write_rows(synthetic_rows("dip", 6, size=48), str(out), "dip", target_samples=3)
    report = validate(str(out))
    assert report.ok and report.shards == 2, str(report)
    return out


def members(tar_path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(tar_path) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]


def rewrite(tar_path: Path, items: list[tuple[str, bytes]]) -> None:
    with tarfile.open(tar_path, "w") as tar:
        for name, data in items:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def first_shard(out: Path) -> Path:
    return sorted((out / "shards").glob("*.tar"))[0]


def kinds(out) -> set[str]:
    report = validate(str(out))
    assert not report.ok
    return report.kinds()


def test_missing_member(dataset):
    tar = first_shard(dataset)
    rewrite(tar, [(n, d) for n, d in members(tar) if not n.endswith(".lose.jpg")])
    assert kinds(dataset) == {"missing_member"}


def test_extra_member(dataset):
    tar = first_shard(dataset)
    items = members(tar)
    key = items[0][0].split(".")[0]
    rewrite(tar, items[:1] + [(f"{key}.caption.txt", b"extra")] + items[1:])
    assert kinds(dataset) == {"extra_member"}


def test_non_contiguous_members(dataset):
    tar = first_shard(dataset)
    items = members(tar)
    keys = list(dict.fromkeys(n.split(".")[0] for n, _ in items))
    a = [it for it in items if it[0].startswith(keys[0])]
    b = [it for it in items if it[0].startswith(keys[1])]
    rest = [it for it in items if not it[0].startswith((keys[0], keys[1]))]
    rewrite(tar, a[:2] + b + a[2:] + rest)
    # the split key is also reported incomplete in each of its two runs
    assert kinds(dataset) == {"non_contiguous", "missing_member"}


def test_truncated_tar(dataset):
    tar = first_shard(dataset)
    data = tar.read_bytes()
    tar.write_bytes(data[: len(data) // 2 + 100])
    assert "truncated" in kinds(dataset)


def test_tar_cut_at_a_member_boundary_is_truncated(dataset):
    """tarfile reads such a tar as a shorter valid one; the missing end-of-archive marker tells."""
    tar = first_shard(dataset)
    with tarfile.open(tar) as t:
        cut = t.getmembers()[len(t.getmembers()) // 2].offset  # a header: everything before is whole
    tar.write_bytes(tar.read_bytes()[:cut])
    assert "truncated" in kinds(dataset)


def test_mask_size_mismatch(dataset):
    tar = first_shard(dataset)
    m = Member("mask", "png", "mask")
    small = encode_member(m, np.ones((5, 7), bool))
    rewrite(tar, [(n, small if n.endswith(".mask.png") else d) for n, d in members(tar)])
    assert kinds(dataset) == {"size_mismatch"}


def test_complexity_grid_that_does_not_tile(dataset):
    tar = first_shard(dataset)
    m = Member("complexity", "npy", "array", dtype="float16", ndim=2)
    bad = encode_member(m, np.zeros((5, 7), np.float16))
    rewrite(tar, [(n, bad if n.endswith(".complexity.npy") else d) for n, d in members(tar)])
    assert kinds(dataset) == {"size_mismatch"}


def test_undecodable_member(dataset):
    tar = first_shard(dataset)
    rewrite(tar, [(n, b"garbage" if n.endswith(".win.jpg") else d) for n, d in members(tar)])
    assert "undecodable" in kinds(dataset)


def test_manifest_row_for_missing_shard(dataset):
    first_shard(dataset).unlink()
    assert kinds(dataset) == {"missing_shard"}


def test_tar_member_without_manifest_row(dataset):
    manifest = sorted((dataset / "manifest").glob("*.parquet"))[0]
    table = pq.read_table(manifest)
    pq.write_table(table.slice(1), manifest)  # drop one row, its members stay in the tar
    assert kinds(dataset) == {"no_manifest_row"}


def test_duplicate_key_across_shards(dataset):
    manifests = sorted((dataset / "manifest").glob("*.parquet"))
    t0, t1 = pq.read_table(manifests[0]), pq.read_table(manifests[1])
    tar1 = sorted((dataset / "shards").glob("*.tar"))[1]
    dup_key = t0.column("key")[0].as_py()
    src_key = t1.column("key")[0].as_py()
    rewrite(tar1, [(n.replace(src_key, dup_key), d) for n, d in members(tar1)])
    keys = t1.column("key").to_pylist()
    keys[0] = dup_key
    import pyarrow as pa

    pq.write_table(t1.set_column(0, t1.schema.field(0), pa.array(keys, pa.string())), manifests[1])
    assert kinds(dataset) == {"duplicate_key"}


def test_cli_exit_codes(dataset):
    ok = subprocess.run([sys.executable, "-m", "runtime.cli", "validate", str(dataset)], capture_output=True, text=True)
    assert ok.returncode == 0 and "6 samples in 2 shards" in ok.stdout and "OK" in ok.stdout
    first_shard(dataset).unlink()
    bad = subprocess.run([sys.executable, "-m", "runtime.cli", "validate", str(dataset)], capture_output=True, text=True)
    assert bad.returncode == 1 and "missing_shard" in bad.stdout
