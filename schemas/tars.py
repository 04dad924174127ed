"""The tar layout the shard writer writes by hand and a dataset tool rewrites (MultiID's takedown):
a member is a header, its data and zero padding to whole 512-byte blocks; an archive ends with two
zero blocks padded to a whole record. tarfile writes the same bytes, but through its own copies
(see schemas/writer.py)."""
from __future__ import annotations

import copy
import tarfile
from typing import Callable

BLOCK = tarfile.BLOCKSIZE


def padded(size: int) -> int:
    """Bytes `size` bytes of data take in a tar: whole blocks."""
    return -(-size // BLOCK) * BLOCK


def member_header(name: str, size: int) -> bytes:
    """tarfile's header for a member with webdataset TarWriter's fields (a pax header first where
    one ustar block cannot hold the name or size)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = size, 0, 0o444, "bigdata", "bigdata"
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def write_member(stream, header: bytes, data) -> int:
    """Header, data (bytes or a memoryview) and padding; the bytes written."""
    stream.write(header)
    stream.write(data)
    stream.write(bytes(padded(len(data)) - len(data)))
    return len(header) + padded(len(data))


def archive_end(written: int) -> bytes:
    """What closes an archive of `written` bytes, as tarfile writes it."""
    end = 2 * BLOCK
    return bytes(end + -(written + end) % tarfile.RECORDSIZE)


KEEP = object()  # rewrite: the member's record copied byte for byte


def copy_bytes(src, n: int, dst) -> int:
    """Exactly n bytes from src to dst, in chunks; a source that ends early is an OSError."""
    left = n
    while left > 0:
        chunk = src.read(min(left, 1 << 20))
        if not chunk:
            raise OSError("tar shorter than its headers say")
        dst.write(chunk)
        left -= len(chunk)
    return n


def rewrite(src, dst, edit: Callable[[tarfile.TarInfo, Callable[[], bytes]], object]) -> int:
    """A tar (`src`, a seekable binary file) copied to `dst` member by member: `edit(member,
    read)` returns KEEP (its header and data copied byte for byte), None (left out) or new bytes
    (the member again with that data and its own header fields); `read()` gives its data. What
    precedes the first member (a pax global header) is kept. Returns the bytes written, the
    archive's end included."""
    with tarfile.open(fileobj=src, mode="r:") as tar:
        members = list(tar)
    src.seek(0)
    written = copy_bytes(src, members[0].offset if members else 0, dst)

    def reader(m: tarfile.TarInfo) -> Callable[[], bytes]:
        def read() -> bytes:
            src.seek(m.offset_data)
            return src.read(m.size)
        return read

    for m in members:
        verdict = edit(m, reader(m))
        if verdict is None:
            continue
        if verdict is KEEP:
            src.seek(m.offset)
            written += copy_bytes(src, m.offset_data + padded(m.size) - m.offset, dst)
        else:
            again = copy.copy(m)
            again.size = len(verdict)
            written += write_member(dst, again.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"), verdict)
    dst.write(archive_end(written))
    return written
