"""The tar layout the shard writer and `forget` write by hand: a member is a header, its data and
zero padding to whole 512-byte blocks; an archive ends with two zero blocks padded to a whole
record. tarfile writes the same bytes, but through its own copies (see schemas/writer.py)."""
from __future__ import annotations

import tarfile

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
