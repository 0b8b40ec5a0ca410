"""The cache file: a fixed preamble, two header slots and the logits, in one file.

Layout (all integers little-endian)::

    offset 0       preamble: MAGIC (16 bytes), format version (u32), slot size (u32),
                   data offset (u64), zero padding to 4096
    offset 4096    header slot A: payload length (u64), SHA-256 of the payload (32 bytes),
                   payload (UTF-8 JSON), zero padding to SLOT_SIZE
    offset 4096 + SLOT_SIZE
                   header slot B, the same
    DATA_OFFSET    the logits: float32 [N images, V views, C classes], C order

Two slots make each header update atomic: a new header goes to the slot that does not hold
the current one and is synced before anything relies on it; a reader takes the valid slot
(length and checksum right) that is furthest along (``complete``, then ``rows_done``). A
write torn by a crash leaves the other slot, one step older, in force. At the end both
slots get the final header, so a finished file does not depend on how its build went.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

__all__ = ["MAGIC", "FORMAT_VERSION", "SLOT_SIZE", "DATA_OFFSET", "CacheFileError", "data_bytes",
           "read_header", "write_header", "create_file", "header_rank"]

MAGIC = b"SLDISTILL-TCACHE"
FORMAT_VERSION = 1
SLOT_SIZE = 16384
_SLOTS = (4096, 4096 + SLOT_SIZE)
DATA_OFFSET = 65536
_PREAMBLE = struct.Struct("<16sIIQ")
_SLOT_HEAD = struct.Struct("<Q32s")


class CacheFileError(ValueError):
    """The file is not a teacher cache, or is damaged (the message names the file and what is wrong)."""


def data_bytes(shape: tuple[int, int, int] | list[int]) -> int:
    """Bytes of the logits of a cache of ``shape`` ``[N, V, C]`` (float32)."""
    n, v, c = (int(d) for d in shape)
    return n * v * c * 4


def header_rank(header: dict[str, Any]) -> tuple[int, int]:
    """How far along a header is: ``(complete, rows_done)``."""
    progress = header.get("progress", {})
    return int(bool(progress.get("complete"))), int(progress.get("rows_done", 0))


def _encode(header: dict[str, Any]) -> bytes:
    payload = json.dumps(header, sort_keys=False, separators=(",", ":")).encode("utf-8")
    if _SLOT_HEAD.size + len(payload) > SLOT_SIZE:
        raise ValueError(f"teacher-cache header of {len(payload)} bytes does not fit a {SLOT_SIZE}-byte slot")
    blob = _SLOT_HEAD.pack(len(payload), hashlib.sha256(payload).digest()) + payload
    return blob + b"\0" * (SLOT_SIZE - len(blob))


def _decode(raw: bytes) -> dict[str, Any] | None:
    """The header of one slot, or ``None`` if the slot is empty or torn."""
    if len(raw) < _SLOT_HEAD.size:
        return None
    length, digest = _SLOT_HEAD.unpack_from(raw)
    payload = raw[_SLOT_HEAD.size:_SLOT_HEAD.size + length]
    if length == 0 or len(payload) != length or hashlib.sha256(payload).digest() != digest:
        return None
    try:
        header = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return header if isinstance(header, dict) else None


def read_header(path: str | os.PathLike) -> tuple[dict[str, Any], int]:
    """``(header, slot)`` of the cache at ``path``: the valid slot furthest along.

    Raises:
        FileNotFoundError: no file there.
        CacheFileError: not a teacher cache, another format version, or no valid header.
    """
    path = Path(path)
    with open(path, "rb") as f:
        pre = f.read(_PREAMBLE.size)
        if len(pre) < _PREAMBLE.size or _PREAMBLE.unpack(pre)[0] != MAGIC:
            raise CacheFileError(f"{path} is not a teacher cache (no {MAGIC.decode()} preamble)")
        _, version, slot_size, offset = _PREAMBLE.unpack(pre)
        if version != FORMAT_VERSION or slot_size != SLOT_SIZE or offset != DATA_OFFSET:
            raise CacheFileError(f"{path}: teacher-cache format {version} (slot {slot_size}, data at {offset}); this "
                                 f"sldistill reads format {FORMAT_VERSION}: build the cache again")
        found = []
        for i, start in enumerate(_SLOTS):
            f.seek(start)
            header = _decode(f.read(SLOT_SIZE))
            if header is not None:
                found.append((header_rank(header), i, header))
    if not found:
        raise CacheFileError(f"{path}: both header slots are damaged (the file is corrupt); remove it and build "
                             "the cache again")
    _, slot, header = max(found, key=lambda t: t[0])
    return header, slot


def write_header(fd: int, header: dict[str, Any], slot: int) -> None:
    """Write ``header`` into ``slot`` (0 or 1) of the open file ``fd`` and sync it to disk."""
    os.pwrite(fd, _encode(header), _SLOTS[slot])
    os.fsync(fd)


def create_file(path: Path, header: dict[str, Any]) -> None:
    """A new cache file at ``path`` holding ``header`` in both slots and room for the logits.

    Written to a temporary name in the same folder, synced and renamed, so ``path`` never
    holds a file without a valid header. The logits region is allocated sparsely.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.creating")
    try:
        with open(tmp, "wb") as f:
            f.write(_PREAMBLE.pack(MAGIC, FORMAT_VERSION, SLOT_SIZE, DATA_OFFSET))
            f.flush()
            f.truncate(DATA_OFFSET + data_bytes(header["shape"]))
            for slot in (0, 1):
                write_header(f.fileno(), header, slot)
        os.replace(tmp, path)
        _sync_folder(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _sync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform allows opening folders)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
