"""The pooled counterfeits of hardening, streamed: a pool larger than memory is never held whole.

The rows are those `split_counterfeits` trains on (every store's rows, a row id seen twice kept once,
held-out rows by `is_eval_row`), in the same order; what changes is who holds them:
- the caller that starts the training only *scans* the pool (`scan_pool`): every file checked part by
  part as `read_store` checks it, counting the training rows; it keeps an 8-byte fingerprint per row to
  find ids seen in an earlier file (0.8 MB per 100,000 rows), never an image;
- the training rows are read file by file (`training_rows`: one row group at a time), in the loop that
  feeds the workers (Ray Data in `ccc_ray/orchestration/harden_classifier.py`); the held-out rows the same
  way (`split_rows(..., held_out=True)`), by the tasks that feed evaluation's scoring actors
  (`ccc_ray/orchestration/evaluation.py`), and the split's record of ids is written part by part
  (`write_split_ids`);
- a worker holds its share through a `CounterfeitWindow`: all of it when it fits `rows_per_worker`
  (then training is exactly what it was with the whole pool in memory), else a window of that many rows
  sliding through the share once per epoch, from which each step draws at random.

Images: uint8 N x C x H x W as stored; the window hands out float32 in [0, 1] (`/ 255`, as `table_images`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from ccc_ray.errors import CccError
from ccc_ray.hardening.counterfeits import CounterfeitSplit, is_eval_row
from ccc_ray.store.reader import read_file_parts, scan_store, store_files, table_images

SCAN_ROWS = 4096  # rows per part when a file is scanned or read: bounds the memory of both


@dataclass
class PoolScan:
    """What training on a pool needs to know, without its images."""

    files: list[str]  # every store file once, in pool order (a store given twice, or a folder and its file, once)
    train_rows: int
    eval_rows: int
    image_shape: tuple[int, int, int]
    dropped: dict[str, list[str]] = field(default_factory=dict)  # file -> ids already in an earlier file
    held_out_families: list[str] = field(default_factory=list)  # the store `method`s of the held-out rows, sorted


def _fingerprints(ids: list[str]) -> np.ndarray:
    """8 bytes of sha256 per id: a duplicate check at 8 bytes a row (a false match: ~1e-10 at 10^5 rows)."""
    return np.frombuffer(b"".join(hashlib.sha256(row.encode()).digest()[:8] for row in ids), np.uint64)


def pool_files(stores: list[str | Path]) -> list[str]:
    """The Parquet files of the stores, in order, each once."""
    return list(dict.fromkeys(str(file) for store in stores for file in store_files(store)))


def _pool_parts(stores: list[str | Path], image_shape: tuple[int, int, int], num_classes: int,
                eval_fraction: float, seed: int) -> Iterator[tuple[str, pa.Table, list[str], np.ndarray, np.ndarray]]:
    """(file, part, ids, seen in an earlier file, held out) for each checked part of each pool file, each
    file once; an empty store raises, as `read_store` does."""
    if not stores:
        raise CccError("harden.stores: no counterfeit store given")
    earlier = np.empty(0, np.uint64)
    rows_in: dict[str, int] = {}
    for store in stores:
        for file in map(str, store_files(store)):
            if file in rows_in:
                continue
            rows_in[file], prints = 0, []
            for _, table in scan_store(file, image_shape, num_classes, SCAN_ROWS):
                ids = table["id"].to_pylist()
                here = _fingerprints(ids)
                seen = np.isin(here, earlier)
                held_out = np.zeros(len(ids), bool)
                held_out[~seen] = is_eval_row([row for row, old in zip(ids, seen) if not old], eval_fraction, seed)
                rows_in[file] += len(ids)
                prints.append(here)
                yield file, table, ids, seen, held_out
            mine = np.concatenate(prints) if prints else np.empty(0, np.uint64)
            if len(np.unique(mine)) < len(mine):
                raise CccError(f"counterfeit store {file!r} holds a row id twice; a store file written by "
                               "ccc-ray never does (is it a concatenation of files? give the files instead)")
            earlier = np.union1d(earlier, mine)
        if not sum(rows_in[str(file)] for file in store_files(store)):
            raise CccError(f"counterfeit store {str(store)!r} is empty")


def _check_split(train_rows: int, eval_rows: int, eval_fraction: float) -> None:
    if not train_rows or not eval_rows:
        raise CccError(f"harden: {train_rows + eval_rows} counterfeits are too few to split at eval_fraction "
                       f"{eval_fraction}")


def scan_pool(stores: list[str | Path], image_shape: tuple[int, int, int], num_classes: int,
              eval_fraction: float, seed: int) -> PoolScan:
    """Check every store file and count the training rows, holding one part of one file at a time."""
    train_rows = eval_rows = 0
    dropped: dict[str, list[str]] = {}
    families: set[str] = set()
    for file, table, ids, seen, held_out in _pool_parts(stores, image_shape, num_classes, eval_fraction, seed):
        if seen.any():
            dropped.setdefault(file, []).extend(row for row, old in zip(ids, seen) if old)
        if held_out.any():
            families.update(table["method"].filter(pa.array(held_out)).unique().to_pylist())
        eval_rows += int(held_out.sum())
        train_rows += int((~held_out & ~seen).sum())
    _check_split(train_rows, eval_rows, eval_fraction)
    return PoolScan(pool_files(stores), train_rows, eval_rows, tuple(image_shape), dropped, sorted(families))


def write_split_ids(path: Path, stores: list[str | Path], image_shape: tuple[int, int, int], num_classes: int,
                    eval_fraction: float, seed: int) -> None:
    """The split's record, `{"stores", "eval_fraction", "split_seed", "train_ids", "held_out_ids"}` as JSON
    (the ids of `held_out_split`), written part by part: ids are never all in memory. Atomic (a hidden
    temporary file, then a rename)."""
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w") as record, tempfile.TemporaryFile("w+") as held_ids:
        head = json.dumps({"stores": [str(store) for store in stores], "eval_fraction": eval_fraction,
                           "split_seed": seed})
        record.write(head[:-1] + ', "train_ids": [')
        separators = {"train": "", "held": ""}
        for _, _, ids, seen, held_out in _pool_parts(stores, image_shape, num_classes, eval_fraction, seed):
            for row, old, held in zip(ids, seen, held_out):
                if old:
                    continue
                side, out = ("held", held_ids) if held else ("train", record)
                out.write(separators[side] + json.dumps(row))
                separators[side] = ", "
        held_ids.seek(0)
        record.write('], "held_out_ids": [')
        shutil.copyfileobj(held_ids, record)
        record.write("]}")
    os.replace(temporary, path)


def held_out_split(stores: list[str | Path], image_shape: tuple[int, int, int], num_classes: int,
                   eval_fraction: float, seed: int) -> CounterfeitSplit:
    """`split_counterfeits` for a caller that trains on none of it: the held-out rows' images, targets and
    methods, the ids of both sides, and no training image (`train_images` and `train_targets` are empty).
    Read one part at a time, so the caller holds the held-out share of the pool, not all of it."""
    images, targets, methods, train_ids, eval_ids = [], [], [], [], []
    for _, table, ids, seen, held_out in _pool_parts(stores, image_shape, num_classes, eval_fraction, seed):
        train_ids += [row for row, old, held in zip(ids, seen, held_out) if not (old or held)]
        if held_out.any():
            part = table.filter(pa.array(held_out))
            images.append(table_images(part))
            targets.append(torch.tensor(part["target"].to_pylist(), dtype=torch.int64))
            methods += part["method"].to_pylist()
            eval_ids += part["id"].to_pylist()
    _check_split(len(train_ids), len(eval_ids), eval_fraction)
    c, h, w = image_shape
    return CounterfeitSplit(torch.empty(0, c, h, w), torch.empty(0, dtype=torch.int64), train_ids,
                            torch.cat(images), torch.cat(targets), eval_ids, methods)


def split_rows(file: str, image_shape: tuple[int, int, int], eval_fraction: float, seed: int,
               dropped: Iterable[str] = (), held_out: bool = False) -> Iterator[tuple[np.ndarray, pa.Table]]:
    """The training rows (or, `held_out`, the held-out rows) of one store file, in file order, no id in
    `dropped`: per part, the images as uint8 N x C x H x W and the part's rows. The file was checked by
    `scan_pool`; the schema and size are checked again."""
    c, h, w = image_shape
    dropped = set(dropped)
    for table in read_file_parts(file, SCAN_ROWS):
        ids = table["id"].to_pylist()
        keep = is_eval_row(ids, eval_fraction, seed) == held_out
        if dropped:
            keep &= np.array([row not in dropped for row in ids], bool)
        if not keep.any():
            continue
        part = table.filter(pa.array(keep))
        column = part["image"].combine_chunks()
        start = np.frombuffer(column.buffers()[1], np.int32)[column.offset]
        pixels = np.frombuffer(column.buffers()[2], np.uint8)[start:start + len(column) * c * h * w]
        yield pixels.reshape(len(column), h, w, c).transpose(0, 3, 1, 2).copy(), part


def training_rows(file: str, image_shape: tuple[int, int, int], eval_fraction: float, seed: int,
                  dropped: Iterable[str] = ()) -> Iterator[np.ndarray]:
    """The training rows of one store file as uint8 N x C x H x W parts, in file order (`split_rows`)."""
    for images, _ in split_rows(file, image_shape, eval_fraction, seed, dropped):
        yield images


def held_out_rows(scan: PoolScan, eval_fraction: float, seed: int,
                  limit: int | None = None) -> tuple[torch.Tensor, list[str]]:
    """The held-out rows of the pool in `held_out_split`'s order (the first `limit` of them, if given): images
    as float32 N x C x H x W in [0, 1] (as `table_images`) and their store `method`s, read part by part."""
    parts, methods, count = [], [], 0
    for file in scan.files:
        for images, part in split_rows(file, scan.image_shape, eval_fraction, seed, scan.dropped.get(file, ()),
                                       held_out=True):
            take = len(images) if limit is None else min(len(images), limit - count)
            parts.append(images[:take])
            methods += part["method"].slice(0, take).to_pylist()
            count += take
            if limit is not None and count >= limit:
                break
        if limit is not None and count >= limit:
            break
    return torch.from_numpy(np.concatenate(parts)).float().div_(255.0), methods


class CounterfeitWindow:
    """A worker's training counterfeits, `passes()` giving one pass over them (uint8 N x C x H x W parts).

    `rows`: how many one pass gives (about); `capacity`: how many are held at once. When they fit, the
    first pass is kept whole (`images`) and never read again. Otherwise each epoch reads one pass,
    paced over the epoch's steps (`start_epoch`, `step`, `finish_epoch`) into a ring of `capacity` rows;
    `window[index]` and `len(window)` let a step draw from the rows held now.
    """

    def __init__(self, passes: Callable[[], Iterable[np.ndarray]], rows: int, capacity: int):
        if capacity < 1:
            raise CccError(f"harden.pool_rows_per_worker: must be at least 1, got {capacity}")
        self.passes, self.rows, self.capacity = passes, rows, capacity
        self.fits = rows <= capacity
        self.read = 0  # rows the last pass gave this worker
        self._ring: np.ndarray | None = None  # uint8, capacity x C x H x W
        self._held = self._next = self._read = self._steps = self._step = 0
        self._parts: Iterator[np.ndarray] | None = None
        self._leftover: np.ndarray | None = None

    def images(self) -> torch.Tensor:
        """The whole share as float32 N x C x H x W in [0, 1], when it fits (read once)."""
        if not self.fits:
            raise CccError(f"the counterfeit pool ({self.rows} rows per worker) exceeds harden.pool_rows_per_worker "
                           f"({self.capacity}); reject mode needs every counterfeit at once: raise it, or use "
                           "harden.mode adaptive or oe, which stream a larger pool")
        parts = list(self.passes())
        self.read = sum(len(part) for part in parts)
        if not parts:
            return torch.empty(0)
        return torch.from_numpy(np.concatenate(parts)).float().div_(255.0)  # a fresh array: Ray's are read-only

    def start_epoch(self, steps: int) -> None:
        self._parts, self._leftover = iter(self.passes()), None
        self._held = self._next = self._read = 0
        self._steps, self._step = max(steps, 1), 0
        self._fill(self.capacity)

    def step(self) -> None:
        """After a step: read on, so that the pass ends with the epoch's last step."""
        self._step += 1
        self._fill(self.capacity + -(-(self.rows - self.capacity) * self._step // self._steps))

    def finish_epoch(self) -> None:
        """Read what is left of the pass (a split dataset's next epoch starts when every reader's pass ended)."""
        if self._leftover is not None:
            self._read += len(self._leftover)
        if self._parts is not None:
            for part in self._parts:
                self._read += len(part)
        self._parts, self._leftover = None, None
        self.read = self._read

    def _fill(self, target: int) -> None:
        while self._read < target and self._parts is not None:
            part = self._leftover if self._leftover is not None else next(self._parts, None)
            self._leftover = None
            if part is None:
                self._parts = None
                return
            take = min(len(part), target - self._read)
            if take < len(part):
                self._leftover = part[take:]
            self._put(part[:take])
            self._read += take

    def _put(self, rows: np.ndarray) -> None:
        if self._ring is None:
            self._ring = np.empty((self.capacity, *rows.shape[1:]), np.uint8)
        for start in range(0, len(rows), self.capacity):
            chunk = rows[start:start + self.capacity]
            first = min(len(chunk), self.capacity - self._next)
            self._ring[self._next:self._next + first] = chunk[:first]
            self._ring[:len(chunk) - first] = chunk[first:]
            self._next = (self._next + len(chunk)) % self.capacity
            self._held = min(self.capacity, self._held + len(chunk))

    def __len__(self) -> int:
        return self._held

    def __getitem__(self, index: torch.Tensor) -> torch.Tensor:
        """The rows at `index` (into the rows held now) as float32 in [0, 1]."""
        return torch.from_numpy(self._ring[:self._held][index.numpy()]).float().div_(255.0)
