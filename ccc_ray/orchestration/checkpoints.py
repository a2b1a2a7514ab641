"""Checkpoint folders for Ray Train: one `state.pt` of tensors and plain containers, never arbitrary pickles."""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import ray.train
import torch

STATE_FILE = "state.pt"


@contextmanager
def checkpoint_to_report(state: dict | None) -> Iterator[ray.train.Checkpoint | None]:
    """A Checkpoint holding `state` (rank 0), or None on the other ranks; the folder lives until reported."""
    if state is None:
        yield None
        return
    with tempfile.TemporaryDirectory() as folder:
        torch.save(state, Path(folder) / STATE_FILE)
        yield ray.train.Checkpoint.from_directory(folder)


def load_checkpoint_state(checkpoint: ray.train.Checkpoint) -> dict:
    """The state saved by `checkpoint_to_report`, read with weights_only=True (no code runs on load)."""
    with checkpoint.as_directory() as folder:
        return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
