"""Shard writers: WebDataset tars and Parquet files, each written to a temporary name and renamed
into place when whole, so a shard either exists complete or not at all."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any, BinaryIO

# What a sample adds beside its image, at most (three tar headers and padding, the JSON): the
# estimate that decides whether the next job still fits in a shard's ``shard_bytes``.
OVERHEAD = 4096
# Members are dated 2000-01-01 rather than now: a resumed or repeated export writes the same
# bytes, so a shard's sha256 names its content.
MTIME = 946684800
TMP_SUFFIX = ".tmp"


class _Counting(io.RawIOBase):
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, out: BinaryIO):
        self.out = out
        self.sha = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.size

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.out.write(view)
        self.sha.update(view)
        self.size += len(view)
        return len(view)


class ShardWriter:
    """One shard being written: add samples, then ``close()`` to publish it."""

    suffix = ""
    counter: _Counting

    def __init__(self, path: Path):
        self.path = path
        # Hidden while written: a reader globbing the folder mid-export never sees half a shard.
        self.tmp = path.with_name(f".{path.name}{TMP_SUFFIX}")
        self.samples = 0
        self.first_key: str | None = None
        self.last_key: str | None = None

    def add(self, key: str, image: bytes | None, meta: dict[str, Any], prompt: str) -> None:
        self.first_key = self.first_key or key
        self.last_key = key
        self.samples += 1
        self._add(key, image, meta, prompt)

    @property
    def payload(self) -> int:
        """Bytes the shard holds so far (the ``shard_bytes`` budget)."""
        return self.counter.size

    def _add(self, key: str, image: bytes | None, meta: dict[str, Any], prompt: str) -> None:
        raise NotImplementedError

    def close(self) -> dict[str, Any]:
        """Finish the file, move it into place; returns its manifest entry."""
        raise NotImplementedError

    def abort(self) -> None:
        self.tmp.unlink(missing_ok=True)

    def _publish(self, sha: str, size: int) -> dict[str, Any]:
        os.replace(self.tmp, self.path)
        return {
            "name": self.path.name,
            "samples": self.samples,
            "bytes": size,
            "sha256": sha,
            "first_key": self.first_key,
            "last_key": self.last_key,
        }


def tar_header(name: str, size: int) -> bytes:
    """A ustar header for a regular file: built by hand, as tarfile's own (PAX checks, copies of
    the TarInfo) costs more than the write itself for the small members a shard is made of."""
    raw = name.encode()
    if len(raw) > 99 or not raw.isascii():
        info = tarfile.TarInfo(name)  # long or non-ASCII names need a PAX record
        info.size, info.mtime, info.mode = size, MTIME, 0o644
        return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    head = bytearray(512)
    head[0 : len(raw)] = raw
    head[100:108] = b"0000644\0"
    head[108:116] = b"0000000\0"
    head[116:124] = b"0000000\0"
    head[124:136] = b"%011o\0" % size
    head[136:148] = b"%011o\0" % MTIME
    head[148:156] = b"        "  # the checksum counts its own field as spaces
    head[156:157] = b"0"
    head[257:265] = b"ustar\x0000"
    head[148:156] = b"%06o\0 " % sum(head)
    return bytes(head)


class TarShard(ShardWriter):
    """A WebDataset shard: ``<key>.png``, ``<key>.json``, ``<key>.txt`` per sample, adjacent."""

    suffix = ".tar"

    def __init__(self, path: Path):
        super().__init__(path)
        self.file = self.tmp.open("wb", buffering=1 << 20)
        self.counter = _Counting(self.file)

    def _member(self, name: str, data: bytes) -> None:
        self.counter.write(tar_header(name, len(data)))
        self.counter.write(data)
        if len(data) % 512:
            self.counter.write(bytes(512 - len(data) % 512))

    def _add(self, key: str, image: bytes | None, meta: dict[str, Any], prompt: str) -> None:
        if image is not None:
            self._member(f"{key}.png", image)
        self._member(f"{key}.json", json.dumps(meta, ensure_ascii=False, sort_keys=True).encode())
        self._member(f"{key}.txt", prompt.encode())

    def close(self) -> dict[str, Any]:
        self.counter.write(bytes(1024))  # the end-of-archive marker: two zero blocks
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return self._publish(self.counter.sha.hexdigest(), self.counter.size)

    def abort(self) -> None:
        self.file.close()
        super().abort()


# One row per image. ``spec`` and ``timings`` are JSON text: a job's spec differs by model and
# task, and one JSON column reads the same in pandas, datasets and DuckDB.
def parquet_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("key", pa.string()),
            ("job_id", pa.string()),
            ("campaign_id", pa.string()),
            ("image_index", pa.int32()),
            ("state", pa.string()),
            ("prompt", pa.string()),
            ("negative_prompt", pa.string()),
            ("seed", pa.int64()),
            ("model", pa.string()),
            ("task", pa.string()),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("s3_key", pa.string()),
            ("spec", pa.string()),
            ("timings", pa.string()),
            ("image", pa.binary()),
        ]
    )


class ParquetShard(ShardWriter):
    """A Parquet shard, one row per image, flushed a row group at a time."""

    suffix = ".parquet"

    def __init__(self, path: Path, *, group_rows: int = 100, group_bytes: int = 64 << 20):
        import pyarrow.parquet as pq

        super().__init__(path)
        self.schema = parquet_schema()
        self.file = self.tmp.open("wb")
        self.counter = _Counting(self.file)
        # PNG is already compressed: its column is stored as is, the text ones with zstd.
        codecs = {name: "zstd" for name in self.schema.names}
        codecs["image"] = "none"
        self.writer = pq.ParquetWriter(self.counter, self.schema, compression=codecs)
        self.rows: list[dict[str, Any]] = []
        self.group_rows, self.group_bytes, self.buffered = group_rows, group_bytes, 0

    @property
    def payload(self) -> int:
        return self.counter.size + self.buffered

    def _add(self, key: str, image: bytes | None, meta: dict[str, Any], prompt: str) -> None:
        spec = meta.get("spec") or {}
        self.rows.append(
            {
                "key": key,
                "job_id": meta.get("job_id"),
                "campaign_id": meta.get("campaign_id"),
                "image_index": meta.get("image_index"),
                "state": meta.get("state"),
                "prompt": prompt,
                "negative_prompt": spec.get("negative_prompt"),
                "seed": meta.get("seed"),
                "model": meta.get("model"),
                "task": meta.get("task"),
                "width": meta.get("width"),
                "height": meta.get("height"),
                "s3_key": meta.get("s3_key"),
                "spec": json.dumps(spec, ensure_ascii=False, sort_keys=True),
                "timings": json.dumps(meta.get("timings") or {}, sort_keys=True),
                "image": image,
            }
        )
        self.buffered += len(image or b"") + len(prompt) + 1024  # the row's text columns
        if len(self.rows) >= self.group_rows or self.buffered >= self.group_bytes:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self.rows:
            self.writer.write_table(pa.Table.from_pylist(self.rows, schema=self.schema))
            self.rows, self.buffered = [], 0

    def close(self) -> dict[str, Any]:
        self._flush()
        self.writer.close()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        return self._publish(self.counter.sha.hexdigest(), self.counter.size)

    def abort(self) -> None:
        self.rows = []
        try:
            self.writer.close()
        except Exception:  # a half-written shard is discarded whatever state it is in
            pass
        self.file.close()
        super().abort()


WRITERS: dict[str, type[ShardWriter]] = {"webdataset": TarShard, "parquet": ParquetShard}


def png_size(data: bytes | None) -> tuple[int, int] | None:
    """Width and height from a PNG's IHDR chunk (None for anything else): read from the bytes
    rather than the spec, which an interpolation or a model's rounding may not match."""
    if data and len(data) >= 24 and data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None
