"""Cache snapshots: the cached answers written at shutdown, read back at start.

An upgrade then starts with a warm cache instead of sending every pod's next
query upstream. Sans I/O: ``dump`` returns bytes and ``load`` takes bytes;
the caller reads and writes the file (atomically) and supplies the clocks.

Format, version 1 (all integers big-endian)::

    magic    8 bytes  b"NCSNAP\\r\\n"
    version  u16      1
    wall     f64      time.time() when written
    count    u32      number of entries
    entries  count x:
        zone     u8 len + UTF-8    the zone the entry belongs to ("cluster.local.@53")
        key      u16 len + bytes   the cache key
        kind     u8                0 success, 1 denial, 2 servfail
        rcode    u16
        ttl      u32               the stored TTL, s
        age      f64               seconds since it was stored, at ``wall``
        keep     u8                keepttl
        headers  4 x (u8 len + bytes)
        variants u16 count, each: u16 count of segments, each u32 len + bytes
    crc32    u32      of everything before it

Entries keep aging across the gap: an entry restored ``g`` seconds after the
snapshot was written is ``age + g`` seconds old, so TTLs seen by clients never
go up. Anything that does not match exactly (magic, version, CRC, lengths) is
refused as a whole with :class:`SnapshotError`; the agent logs it and starts cold.
"""
from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from nodecache.core.cache import Entry, Kind
from nodecache.errors import NodecacheError

MAGIC = b"NCSNAP\r\n"
VERSION = 1
#: Refuse files larger than this, bytes: a snapshot of full default caches is a few MB.
MAX_SIZE = 256 * 1024 * 1024

_KINDS = (Kind.SUCCESS, Kind.DENIAL, Kind.SERVFAIL)
_HEAD = struct.Struct("!8sHdI")
_FIXED = struct.Struct("!BHIdB")
_F64 = struct.Struct("!d")


class SnapshotError(NodecacheError):
    """The cache snapshot is corrupt, truncated, or of another format or version."""


@dataclass(frozen=True)
class Restored:
    """One entry read back from a snapshot."""

    #: The zone label it was written under (see :func:`zone_label`).
    zone: str
    entry: Entry


def zone_label(zone_name: str, port: int) -> str:
    """How a zone is named in a snapshot: its name and its server block's port."""
    return f"{zone_name}@{port}"


def dump(entries: Iterable[tuple[str, Entry]], now: float, wall: float) -> bytes:
    """Serialize ``(zone label, entry)`` pairs; ``now`` is the loop clock, ``wall`` time.time()."""
    parts: list[bytes] = []
    count = 0
    for zone, entry in entries:
        zone_raw = zone.encode("utf-8")[:255]
        out = [bytes((len(zone_raw),)), zone_raw, struct.pack("!H", len(entry.key)), entry.key,
               _FIXED.pack(_KINDS.index(entry.kind), entry.rcode & 0xFFFF, entry.ttl,
                           max(0.0, now - entry.stored), 1 if entry.keep else 0)]
        for header in entry.headers:
            out += [bytes((len(header),)), header]
        variants = entry.segments()
        out.append(struct.pack("!H", len(variants)))
        for segments in variants:
            out.append(struct.pack("!H", len(segments)))
            for segment in segments:
                out += [struct.pack("!I", len(segment)), segment]
        parts.append(b"".join(out))
        count += 1
    body = _HEAD.pack(MAGIC, VERSION, wall, count) + b"".join(parts)
    return body + struct.pack("!I", zlib.crc32(body))


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, n: int) -> bytes:
        end = self.offset + n
        if end > len(self.data):
            raise SnapshotError("snapshot truncated")
        chunk = self.data[self.offset:end]
        self.offset = end
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def f64(self) -> float:
        value: float = _F64.unpack(self.take(8))[0]
        return value


def load(data: bytes, now: float, wall: float) -> list[Restored]:
    """Read a snapshot; entries come back stored relative to the loop clock ``now``.

    :raises SnapshotError: on anything but a well-formed version-1 snapshot.
    """
    if len(data) > MAX_SIZE:
        raise SnapshotError(f"snapshot larger than {MAX_SIZE} bytes")
    if len(data) < _HEAD.size + 4 or not data.startswith(MAGIC):
        raise SnapshotError("not a nodecache cache snapshot")
    body, crc = data[:-4], int.from_bytes(data[-4:], "big")
    reader = _Reader(body)
    # _HEAD, field by field
    reader.take(len(MAGIC))
    version, written, count = reader.u16(), reader.f64(), reader.u32()
    if version != VERSION:
        raise SnapshotError(f"snapshot version {version}, this agent reads {VERSION}")
    if zlib.crc32(body) != crc:
        raise SnapshotError("snapshot checksum mismatch")
    gap = max(0.0, wall - written)
    restored: list[Restored] = []
    try:
        for _ in range(count):
            zone = reader.take(reader.u8()).decode("utf-8")
            key = reader.take(reader.u16())
            # _FIXED, field by field
            kind, rcode, ttl, age, keep = reader.u8(), reader.u16(), reader.u32(), reader.f64(), reader.u8()
            headers = tuple(reader.take(reader.u8()) for _ in range(4))
            variants = []
            for _ in range(reader.u16()):
                variants.append(tuple(reader.take(reader.u32()) for _ in range(reader.u16())))
            if not variants or len(key) < 5 or any(len(h) != 10 for h in headers):
                raise SnapshotError("malformed entry")
            entry = Entry.from_segments(key, _KINDS[kind], rcode, headers, tuple(variants), ttl,
                                        now - age - gap, bool(keep))
            restored.append(Restored(zone, entry))
    except (IndexError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"malformed entry: {exc}") from None
    if reader.offset != len(body):
        raise SnapshotError("trailing bytes after the last entry")
    return restored
