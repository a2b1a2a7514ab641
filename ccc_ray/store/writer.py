"""Streaming, atomic Parquet writes of counterfeit batches, to a local folder or a storage URI.

A run's rows go to `<store>/<method>-<run_id>.parquet`. Batches stream into a hidden temporary file
beside it (memory stays bounded by one batch); only `commit()` puts it in place, so readers never see a
half file, and re-running a run id replaces its file instead of adding duplicate rows.

What "in place" means per storage:
- a local or NFS folder: fsync, then `os.replace`, an atomic rename: readers see the old file or the new
  one, never a mix;
- S3 and GCS (`s3://`, `gs://`): object stores have no rename. An object becomes visible only when its
  upload completes, whole (S3 PUT and multipart uploads, GCS uploads), and S3 reads are strongly
  consistent after a write. The temporary object is written under a hidden name, then copied onto the
  final key in one server-side copy (atomic per object: the old object or the new one) and deleted. A
  job killed mid-write leaves at most a hidden temporary object, or an incomplete multipart upload that
  S3 never lists (a bucket lifecycle rule "abort incomplete multipart uploads" reclaims those). S3's
  single copy is limited to 5 GB per store file.

Hidden names (a leading '.') are skipped by `read_store`, pyarrow datasets, pandas and Ray Data. A
temporary left behind by a killed writer on this host is removed when the next writer of the same run
id commits.
"""

from __future__ import annotations

import binascii
import hashlib
import json
import os
import re
import socket
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ccc_ray.errors import CccError
from ccc_ray.store.files import ensure_writable_dir, filesystem_for, is_uri, join_location
from ccc_ray.store.schema import CLASS_NAMES_KEY, COUNTERFEIT_SCHEMA, RUN_METADATA_KEY

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(value: str, what: str) -> str:
    """Run ids and method names become file names: letters, digits, '.', '_', '-' only."""
    if not _SAFE_NAME.match(value or ""):
        raise CccError(f"{what}: {value!r} must be 1-128 letters, digits, '.', '_' or '-', starting alphanumeric")
    return value


def store_file(store: str | Path, method: str, run_id: str) -> str | Path:
    """The store file of a run: a Path in a local folder, a URI under a URI."""
    return join_location(store, f"{check_name(method, 'method')}-{check_name(run_id, 'run_id')}.parquet")


def counterfeit_id(run_id: str, method: str, seed: int, sample_index: int) -> str:
    """Deterministic row id: the same run regenerates the same ids (the definition `counterfeit_ids` follows)."""
    return hashlib.sha256(f"{run_id}\x00{method}\x00{seed}\x00{sample_index}".encode()).hexdigest()[:32]


ID_HEX_DIGITS = 32
try:  # CPython's own SHA-256: the same digests, cheaper per short message than OpenSSL's, whose context
    # set-up per call costs more than hashing one 64-byte block (320 vs 370 ns a row; docs/BENCHMARKS.md)
    from _sha256 import sha256 as _sha256  # Python <= 3.11
except ImportError:
    try:
        from _sha2 import sha256 as _sha256  # Python >= 3.12
    except ImportError:
        _sha256 = hashlib.sha256
_DIGEST = type(_sha256()).digest  # the method itself: no `methodcaller` lookup per row


def counterfeit_ids(run_id: str, method: str, seed: int, sample_index: np.ndarray) -> pa.StringArray:
    """`counterfeit_id` of every row at once, as one Arrow string column.

    The same sha256 of the same bytes, so existing stores keep their ids; what is gone is the Python work
    per row around it: a C-level `map` chain makes each row's message (`bytes % int` writes decimal
    indices as `str(int)` does), its hash object and its digest, nothing else, and the hex text of all
    rows is written by one `binascii.hexlify` into one buffer (a fixed 32 characters per id, so the
    offsets are a plain range).
    """
    n = len(sample_index)
    template = f"{run_id}\x00{method}\x00{seed}\x00".encode().replace(b"%", b"%%") + b"%d"
    messages = map(template.__mod__, np.asarray(sample_index, np.int64).tolist())
    digests = np.frombuffer(b"".join(map(_DIGEST, map(_sha256, messages))), np.uint8).reshape(n, 32)
    text = binascii.hexlify(np.ascontiguousarray(digests[:, :ID_HEX_DIGITS // 2]))  # lower case, high nibble first
    return pa.StringArray.from_buffers(n, _fixed_offsets(n, ID_HEX_DIGITS), pa.py_buffer(text))


def _fixed_offsets(n: int, size: int) -> pa.Buffer:
    """Offsets of n values of `size` bytes each, back to back (Arrow's 32-bit offsets)."""
    if n * size > np.iinfo(np.int32).max:
        raise CccError(f"counterfeit batch: {n} rows of {size} bytes exceed 2 GiB in one column; write smaller batches")
    return pa.py_buffer(np.arange(0, (n + 1) * size, size, dtype=np.int32))


def _binary_column(rows: np.ndarray) -> pa.BinaryArray:
    """One binary value per row of an N x ... uint8 array, built on one contiguous buffer (no copy per row)."""
    n, size = len(rows), int(np.prod(rows.shape[1:]))
    flat = np.ascontiguousarray(rows).reshape(n, size)
    return pa.BinaryArray.from_buffers(pa.binary(), n, [None, _fixed_offsets(n, size), pa.py_buffer(flat)])


def counterfeit_batch(images_hwc: np.ndarray, targets: np.ndarray, predicted: np.ndarray, confidence: np.ndarray,
                      nearest_train_l2: np.ndarray, sample_index: np.ndarray, *, run_id: str, method: str,
                      classifier_sha256: str, seed: int, source_id: Sequence[str | None] | None = None,
                      mask: np.ndarray | None = None) -> pa.RecordBatch:
    """One record batch in COUNTERFEIT_SCHEMA from N x H x W x C uint8 images and per-row arrays.

    `source_id`: N ids (strings; None where a row has no source) of the real or substrate images the
    counterfeits were made from. `mask`: N x H x W uint8 saliency or edit masks. Either left at None
    gives an all-null column. Like Arrow's own conversions, the batch reads the image and mask memory
    in place (no copy): write it before changing those arrays.
    """
    if images_hwc.dtype != np.uint8 or images_hwc.ndim != 4:
        raise CccError(f"counterfeit batch: images_hwc must be uint8 N x H x W x C, got {images_hwc.dtype} "
                       f"with shape {tuple(images_hwc.shape)}")
    n, height, width, channels = images_hwc.shape
    now = pa.scalar(datetime.now(timezone.utc), pa.timestamp("us", tz="UTC"))
    columns = {
        "id": counterfeit_ids(run_id, method, seed, sample_index),
        "run_id": pa.repeat(pa.scalar(run_id, pa.string()), n),
        "method": pa.repeat(pa.scalar(method, pa.string()), n),
        "target": pa.array(targets.astype(np.int32)),
        "predicted": pa.array(predicted.astype(np.int32)),
        "confidence": pa.array(confidence.astype(np.float32)),
        "image": _binary_column(images_hwc),
        "height": pa.array(np.full(n, height, np.int32)),
        "width": pa.array(np.full(n, width, np.int32)),
        "channels": pa.array(np.full(n, channels, np.int32)),
        "nearest_train_l2": pa.array(nearest_train_l2.astype(np.float32)),
        "classifier_sha256": pa.repeat(pa.scalar(classifier_sha256, pa.string()), n),
        "seed": pa.array(np.full(n, seed, np.int64)),
        "sample_index": pa.array(sample_index.astype(np.int64)),
        "created_at": pa.repeat(now, n),
        "source_id": _source_id_column(source_id, n),
        "mask": _mask_column(mask, n, height, width),
    }
    return pa.RecordBatch.from_arrays(list(columns.values()), schema=COUNTERFEIT_SCHEMA)


def _source_id_column(source_id: Sequence[str | None] | None, n: int) -> pa.StringArray:
    if source_id is None:
        return pa.nulls(n, pa.string())
    try:
        column = pa.array(list(source_id), pa.string())
    except (pa.ArrowException, TypeError) as error:
        raise CccError(f"counterfeit batch: source_id must be strings (or None per row) ({error})") from None
    if len(column) != n:
        raise CccError(f"counterfeit batch: source_id has {len(column)} entries for {n} images; give one per image")
    return column


def _mask_column(mask: np.ndarray | None, n: int, height: int, width: int) -> pa.BinaryArray:
    if mask is None:
        return pa.nulls(n, pa.binary())
    mask = np.asarray(mask)
    if mask.dtype != np.uint8 or mask.shape != (n, height, width):
        raise CccError(f"counterfeit batch: mask must be uint8 N x H x W = {n} x {height} x {width} like the "
                       f"images, got {mask.dtype} with shape {tuple(mask.shape)}")
    return _binary_column(mask)


# Dictionary encoding pays for columns with few distinct values; for ids, images, masks and measured
# floats Parquet would build a dictionary per row group only to drop it (a third of a write's time).
DICTIONARY_COLUMNS = ["run_id", "method", "target", "predicted", "height", "width", "channels",
                      "classifier_sha256", "seed", "created_at", "source_id"]
# Min/max statistics let readers skip row groups by value; image and mask bytes are never filtered on.
STATISTICS_COLUMNS = [name for name in COUNTERFEIT_SCHEMA.names if name not in ("image", "mask")]
# Encodings that cost less CPU to write than Parquet's PLAIN and give smaller files (docs/BENCHMARKS.md,
# issue 16, third pass). Sample indices are mostly runs of consecutive numbers: delta encoding holds them in a
# few bits a row instead of 8 bytes through zstd. Ids, images and masks: delta-length byte arrays keep the
# lengths (one value, repeated) apart from the bytes, so zstd sees the bytes alone instead of a 4-byte length
# before every value (for 8x8 digits: 40% less time in zstd, and a smaller file).
COLUMN_ENCODINGS = {"sample_index": "DELTA_BINARY_PACKED", "id": "DELTA_LENGTH_BYTE_ARRAY",
                    "image": "DELTA_LENGTH_BYTE_ARRAY", "mask": "DELTA_LENGTH_BYTE_ARRAY"}
# Image and mask bytes that zstd cannot shrink (noise-like counterfeits) are stored as they are: zstd would
# spend more CPU than the rest of the encoding to gain nothing. Judged once per file, on a sample of the first rows.
PIXEL_COLUMNS = ("image", "mask")
_SAMPLE_BYTES = 256 * 2**10
_MIN_SAMPLE_BYTES = 16 * 2**10
_WORTH_COMPRESSING = 0.95  # compressed / raw size of the sample below which zstd is kept


def parquet_settings(first: pa.RecordBatch | None) -> dict[str, Any]:
    """The writer's Parquet settings for a file whose first rows are `first` (None: a file without rows)."""
    raw = [name for name in PIXEL_COLUMNS if first is not None and not _compresses(first.column(name))]
    return {"compression": {name: "none" if name in raw else "zstd" for name in COUNTERFEIT_SCHEMA.names},
            "use_dictionary": DICTIONARY_COLUMNS, "write_statistics": STATISTICS_COLUMNS,
            "column_encoding": {**COLUMN_ENCODINGS, **{name: "PLAIN" for name in raw}}}


def _compresses(column: pa.BinaryArray) -> bool:
    """Whether zstd shrinks a sample of the column's bytes by 5% or more (too small a sample: assume so)."""
    data = column.buffers()[2]
    if data is None or data.size < _MIN_SAMPLE_BYTES:
        return True
    sample = data.slice(0, min(data.size, _SAMPLE_BYTES))
    return pa.compress(sample, "zstd", asbytes=False).size < _WORTH_COMPRESSING * sample.size


class CounterfeitWriter:
    """Context manager: `with CounterfeitWriter(...) as w: w.write(batch)`; commits on clean exit only.

    `store` is a local folder or a URI (see the module docstring for what each guarantees).
    """

    def __init__(self, store: str | Path, method: str, run_id: str, run_metadata: dict[str, Any],
                 class_names: list[str]):
        self.path = store_file(store, method, run_id)
        ensure_writable_dir(store, "run.counterfeit_store")
        self._fs, self._target = filesystem_for(self.path, "run.counterfeit_store")
        self._local = not is_uri(self.path)
        folder, name = self._target.rsplit("/", 1)
        self._tmp_prefix = f"{folder}/.{name}."
        self._tmp = f"{self._tmp_prefix}{_HOST}.{os.getpid()}.tmp"
        metadata = {RUN_METADATA_KEY: json.dumps(run_metadata, default=str).encode(),
                    CLASS_NAMES_KEY: json.dumps(list(class_names)).encode()}
        self._schema = COUNTERFEIT_SCHEMA.with_metadata(metadata)
        self._sink = self._fs.open_output_stream(self._tmp)
        self._writer: pq.ParquetWriter | None = None  # made at the first rows, whose bytes choose the codecs
        self.rows = 0

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows:
            if self._writer is None:
                self._writer = pq.ParquetWriter(self._sink, self._schema, **parquet_settings(batch))
            self._writer.write_batch(batch)
            self.rows += batch.num_rows

    def commit(self) -> str | Path:
        """Finish the file and put it in place; returns its path or URI."""
        if self._writer is None:  # no rows: a file with the schema alone
            self._writer = pq.ParquetWriter(self._sink, self._schema, **parquet_settings(None))
        self._writer.close()
        self._sink.close()
        try:
            if self._local:
                with open(self._tmp, "rb") as handle:
                    os.fsync(handle.fileno())
                os.replace(self._tmp, self._target)
            else:
                self._fs.move(self._tmp, self._target)  # S3/GCS: one server-side copy, then delete
        except (OSError, pa.ArrowException) as error:
            self._delete_tmp()
            raise CccError(f"run.counterfeit_store: could not put {str(self.path)!r} in place ({error})") from None
        self._remove_stale_temporaries()
        return self.path

    def abort(self) -> None:
        try:
            if self._writer is not None:
                self._writer.close()
            self._sink.close()
        finally:
            self._delete_tmp()

    def _delete_tmp(self) -> None:
        try:
            self._fs.delete_file(self._tmp)
        except (FileNotFoundError, OSError, pa.ArrowException):
            pass

    def _remove_stale_temporaries(self) -> None:
        """Delete temporaries of this file left by writers on this host that no longer run (SIGKILL, OOM)."""
        folder = self._tmp_prefix.rsplit("/", 1)[0]
        try:
            infos = self._fs.get_file_info(pafs.FileSelector(folder))
        except (OSError, pa.ArrowException):
            return
        for info in infos:
            rest = info.path[len(self._tmp_prefix):] if info.path.startswith(self._tmp_prefix) else ""
            host, _, pid = rest.removesuffix(".tmp").rpartition(".")
            if host == _HOST and pid.isdigit() and not _process_alive(int(pid)):
                try:
                    self._fs.delete_file(info.path)
                except (OSError, pa.ArrowException):
                    pass

    def __enter__(self) -> "CounterfeitWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


_HOST = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:63] or "host"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
