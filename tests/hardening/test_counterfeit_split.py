"""Counterfeits for hardening: training and evaluation rows never overlap, and the split is stable."""

import numpy as np
import pytest
import torch

from ccc_ray.errors import CccError
from ccc_ray.hardening.counterfeits import is_eval_row, split_counterfeits
from ccc_ray.store import CounterfeitWriter, counterfeit_batch

NAMES = [str(i) for i in range(10)]


def write_store(folder, run_id, n, seed):
    images = np.random.default_rng(seed).integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8)
    targets = np.arange(n) % 10
    with CounterfeitWriter(folder, "inversion", run_id, {}, NAMES) as writer:
        writer.write(counterfeit_batch(images, targets, targets, np.full(n, 0.995), np.full(n, 3.0), np.arange(n),
                                       run_id=run_id, method="inversion", classifier_sha256="ab" * 32, seed=seed))
    return writer.path


def test_rows_never_overlap_and_fraction_is_respected(tmp_path):
    store = write_store(tmp_path / "s", "r0", 400, 1)
    split = split_counterfeits([store], (1, 8, 8), 10, 0.3, seed=0)
    assert not set(split.train_ids) & set(split.eval_ids)
    assert len(split.train_ids) + len(split.eval_ids) == 400
    assert 0.22 < len(split.eval_ids) / 400 < 0.38
    assert split.train_images.shape == (len(split.train_ids), 1, 8, 8)
    assert split.eval_images.shape == (len(split.eval_ids), 1, 8, 8)
    assert float(split.train_images.max()) <= 1.0


def test_held_out_rows_stay_held_out_when_stores_are_pooled(tmp_path):
    first = write_store(tmp_path / "a", "r0", 200, 1)
    second = write_store(tmp_path / "b", "r1", 200, 2)
    alone = split_counterfeits([first], (1, 8, 8), 10, 0.3, seed=0)
    pooled = split_counterfeits([second, first], (1, 8, 8), 10, 0.3, seed=0)
    assert set(alone.eval_ids) <= set(pooled.eval_ids)
    assert set(alone.train_ids) <= set(pooled.train_ids)
    assert len(pooled.train_ids) + len(pooled.eval_ids) == 400


def test_a_store_given_twice_is_counted_once(tmp_path):
    store = write_store(tmp_path / "s", "r0", 100, 1)
    split = split_counterfeits([store, store], (1, 8, 8), 10, 0.3, seed=0)
    assert len(split.train_ids) + len(split.eval_ids) == 100


def test_split_seed_changes_the_split():
    ids = [f"row{i}" for i in range(1000)]
    assert (is_eval_row(ids, 0.3, 0) != is_eval_row(ids, 0.3, 1)).any()
    assert (is_eval_row(ids, 0.3, 0) == is_eval_row(list(ids), 0.3, 0)).all()


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_bad_fraction(fraction):
    with pytest.raises(CccError, match="eval_fraction"):
        is_eval_row(["a", "b"], fraction, 0)


def test_wrong_shape_or_classes_are_refused(tmp_path):
    store = write_store(tmp_path / "s", "r0", 50, 1)
    with pytest.raises(CccError, match="8x8"):
        split_counterfeits([store], (1, 16, 16), 10, 0.3, seed=0)
    with pytest.raises(CccError, match="classes"):
        split_counterfeits([store], (1, 8, 8), 5, 0.3, seed=0)
    with pytest.raises(CccError, match="no counterfeit store"):
        split_counterfeits([], (1, 8, 8), 10, 0.3, seed=0)
    assert torch.is_tensor(split_counterfeits([store], (1, 8, 8), 10, 0.3, seed=0).eval_targets)
