"""Counterfeits for hardening: pooled from stores, split by row into training and evaluation rows.

The split hashes each row's id with the split seed, so it does not depend on which stores are pooled or
in which order: a row held out for evaluation in round 1 stays held out in every later round, and the
training and evaluation rows never overlap.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from ccc_ray.errors import CccError
from ccc_ray.store.reader import read_store, table_images


@dataclass
class CounterfeitSplit:
    train_images: torch.Tensor
    train_targets: torch.Tensor
    train_ids: list[str]
    eval_images: torch.Tensor
    eval_targets: torch.Tensor
    eval_ids: list[str]
    eval_methods: list[str]


def is_eval_row(ids: list[str], eval_fraction: float, seed: int) -> np.ndarray:
    """Bool per id: held out for evaluation, with probability `eval_fraction`, stable per (id, seed)."""
    if not 0 < eval_fraction < 1:
        raise CccError(f"harden.eval_fraction: must lie in (0, 1), got {eval_fraction}")
    draws = [int.from_bytes(hashlib.sha256(f"{seed}\x00{row}".encode()).digest()[:8], "little") / 2**64
             for row in ids]
    return np.asarray(draws) < eval_fraction


def pooled_table(stores: list[str | Path], image_shape: tuple[int, int, int], num_classes: int) -> pa.Table:
    """The rows of every store, checked against the data; a row id seen twice is kept once."""
    if not stores:
        raise CccError("harden.stores: no counterfeit store given")
    tables = [read_store(store, image_shape, num_classes) for store in stores]
    table = pa.concat_tables(tables)
    ids = table["id"].to_pylist()
    _, first = np.unique(np.asarray(ids), return_index=True)
    return table.take(pa.array(np.sort(first))) if len(first) < len(ids) else table


def split_counterfeits(stores: list[str | Path], image_shape: tuple[int, int, int], num_classes: int,
                       eval_fraction: float, seed: int) -> CounterfeitSplit:
    table = pooled_table(stores, image_shape, num_classes)
    ids = table["id"].to_pylist()
    held_out = is_eval_row(ids, eval_fraction, seed)
    if held_out.all() or not held_out.any():
        raise CccError(f"harden: {len(ids)} counterfeits are too few to split at eval_fraction {eval_fraction}")
    images = table_images(table)
    targets = torch.tensor(table["target"].to_pylist(), dtype=torch.int64)
    methods = table["method"].to_pylist()
    train, held = torch.from_numpy(~held_out), torch.from_numpy(held_out)
    return CounterfeitSplit(
        images[train], targets[train], [i for i, h in zip(ids, held_out) if not h],
        images[held], targets[held], [i for i, h in zip(ids, held_out) if h], [m for m, h in zip(methods, held_out) if h])
