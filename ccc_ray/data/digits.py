"""scikit-learn's handwritten digits: the embedded default (1,797 8x8 grey images, 10 classes, no download)."""

from __future__ import annotations

import numpy as np
import torch


def load_digits_arrays() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """All 1,797 images as N x 1 x 8 x 8 float32 in [0, 1] (the raw values are 0..16), labels, names."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy((bunch.images / 16.0).astype(np.float32)).unsqueeze(1)
    labels = torch.from_numpy(bunch.target.astype(np.int64))
    return images, labels, [str(name) for name in bunch.target_names]
