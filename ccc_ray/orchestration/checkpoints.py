"""Checkpoint folders for Ray Train: one `state.pt` of tensors and plain containers, never arbitrary pickles.

A checkpoint folder lives in `storage_path`, which other people and jobs can write to, so it is read as
untrusted: `torch.load(weights_only=True)` only rebuilds tensors, numbers, strings and containers and
refuses any other global (a planted `os.system` call, a class with a `__reduce__`) before it runs.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import ray.train
import torch

from ccc_ray.errors import CccError

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
    """The state saved by `checkpoint_to_report`, read with weights_only=True (no code runs on load).

    Anything else in the file (a pickled object, a corrupt or truncated file) raises a CccError naming
    the checkpoint, which Ray Train reports as the run's failure.
    """
    where = f"checkpoint {checkpoint.path!r}"
    with checkpoint.as_directory() as folder:
        file = Path(folder) / STATE_FILE
        if not file.is_file():
            raise CccError(f"{where} has no {STATE_FILE}; it was not written by ccc-ray. Delete the checkpoint "
                           "folder or start a new --run.run_id")
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - torch raises UnpicklingError, RuntimeError, EOFError, ...
            raise CccError(f"{where}: {STATE_FILE} was refused, it is not a plain state of tensors and numbers "
                           f"({_reason(error)}); nothing in it was run. Delete the checkpoint folder or start a new "
                           "--run.run_id") from None
    if not isinstance(state, dict):
        raise CccError(f"{where}: {STATE_FILE} holds a {type(state).__name__}, expected a dict of training state")
    return state


def _reason(error: Exception) -> str:
    """The informative line of torch's multi-paragraph weights-only message (not its advice to turn it off)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if any(word in line.lower() for word in ("unsupported", "unpickler error", "blocked")):
            return line[:200]
    if lines and lines[0].startswith("Weights only load failed"):
        return "the weights-only unpickler refused it"
    return (lines[0] if lines else type(error).__name__)[:200]
