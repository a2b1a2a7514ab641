"""ccc_ray/hardening/pool.py: the streamed pool trains on exactly the rows `split_counterfeits` gives,
in the same order, while the caller holds no image and a worker at most its window."""

import json
import shutil

import numpy as np
import pytest
import torch

from ccc_ray.errors import CccError
from ccc_ray.hardening.counterfeits import split_counterfeits
from ccc_ray.hardening.pool import (CounterfeitWindow, held_out_rows, held_out_split, scan_pool, training_rows,
                                  write_split_ids)
from ccc_ray.store import CounterfeitWriter, counterfeit_batch

NAMES = [str(i) for i in range(10)]
SHAPE = (1, 8, 8)


def write_store(folder, run_id, n, seed, index=None, method="inversion"):
    images = np.random.default_rng(seed).integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8)
    targets = np.arange(n) % 10
    index = np.arange(n) if index is None else index
    with CounterfeitWriter(folder, method, run_id, {}, NAMES) as writer:
        for start in range(0, n, 64):  # several row groups, as `generate` writes them
            part = slice(start, start + 64)
            writer.write(counterfeit_batch(images[part], targets[part], targets[part], np.full(n, 0.995)[part],
                                           np.full(n, 3.0)[part], index[part], run_id=run_id, method=method,
                                           classifier_sha256="ab" * 32, seed=seed))
    return writer.path


def streamed(scan):
    parts = [part for file in scan.files
             for part in training_rows(file, SHAPE, 0.3, 0, scan.dropped.get(file, ()))]
    return torch.from_numpy(np.concatenate(parts)).float().div_(255.0)


def test_streamed_training_rows_are_the_split_s_in_its_order(tmp_path):
    first = write_store(tmp_path / "a", "r0", 300, 1)
    second = write_store(tmp_path / "b", "r1", 200, 2)
    stores = [str(second), str(tmp_path / "a")]
    split = split_counterfeits(stores, SHAPE, 10, 0.3, 0)
    scan = scan_pool(stores, SHAPE, 10, 0.3, 0)
    assert scan.files == [str(second), str(first)]
    assert (scan.train_rows, scan.eval_rows) == (len(split.train_ids), len(split.eval_ids))
    assert torch.equal(streamed(scan), split.train_images)


def test_a_store_given_twice_or_copied_is_counted_once(tmp_path):
    store = write_store(tmp_path / "s", "r0", 100, 1)
    copy = tmp_path / "copy" / "inversion-r0.parquet"
    copy.parent.mkdir()
    shutil.copy(store, copy)
    stores = [str(store), str(tmp_path / "s"), str(copy)]
    split = split_counterfeits(stores, SHAPE, 10, 0.3, 0)
    scan = scan_pool(stores, SHAPE, 10, 0.3, 0)
    assert len(scan.files) == 2 and len(scan.dropped[str(copy)]) == 100
    assert scan.train_rows + scan.eval_rows == 100 == len(split.train_ids) + len(split.eval_ids)
    assert torch.equal(streamed(scan), split.train_images)


def test_the_held_out_split_is_split_counterfeits_without_training_images(tmp_path):
    stores = [str(write_store(tmp_path / "a", "r0", 300, 1)), str(write_store(tmp_path / "b", "r1", 200, 2))]
    stores.append(stores[0])
    whole = split_counterfeits(stores, SHAPE, 10, 0.3, 0)
    held = held_out_split(stores, SHAPE, 10, 0.3, 0)
    assert (held.train_ids, held.eval_ids, held.eval_methods) == (whole.train_ids, whole.eval_ids, whole.eval_methods)
    assert torch.equal(held.eval_images, whole.eval_images) and torch.equal(held.eval_targets, whole.eval_targets)
    assert held.train_images.shape == (0, 1, 8, 8)


def test_held_out_rows_and_the_split_record_are_the_held_out_split_s_read_part_by_part(tmp_path):
    stores = [str(write_store(tmp_path / "a", "r0", 300, 1)),
              str(write_store(tmp_path / "b", "r1", 200, 2, method="cppn"))]
    stores.append(stores[0])  # a store given twice counts once
    held = held_out_split(stores, SHAPE, 10, 0.3, 0)
    scan = scan_pool(stores, SHAPE, 10, 0.3, 0)
    assert scan.held_out_families == ["cppn", "inversion"]
    images, methods = held_out_rows(scan, 0.3, 0)
    assert torch.equal(images, held.eval_images) and methods == held.eval_methods
    first, first_methods = held_out_rows(scan, 0.3, 0, limit=100)  # a bounded sample: the first rows
    assert torch.equal(first, held.eval_images[:100]) and first_methods == held.eval_methods[:100]
    write_split_ids(tmp_path / "split.json", stores, SHAPE, 10, 0.3, 0)
    record = json.loads((tmp_path / "split.json").read_text())
    assert record == {"stores": stores, "eval_fraction": 0.3, "split_seed": 0, "train_ids": held.train_ids,
                      "held_out_ids": held.eval_ids}
    assert (tmp_path / "split.json").read_text() == json.dumps(record)  # the layout json.dumps gives
    assert [path.name for path in tmp_path.iterdir() if path.is_file()] == ["split.json"]  # no temporary left


def test_a_file_holding_an_id_twice_is_refused(tmp_path):
    store = write_store(tmp_path / "s", "r0", 10, 1, index=np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 8]))
    with pytest.raises(CccError, match="holds a row id twice"):
        scan_pool([str(store)], SHAPE, 10, 0.3, 0)


def test_bad_stores_fail_in_the_scan(tmp_path):
    store = write_store(tmp_path / "s", "r0", 50, 1)
    with pytest.raises(CccError, match="holds 1x8x8 images, expected 3x8x8"):
        scan_pool([str(store)], (3, 8, 8), 10, 0.3, 0)
    with pytest.raises(CccError, match="target class 9"):
        scan_pool([str(store)], SHAPE, 5, 0.3, 0)
    with pytest.raises(CccError, match="too few to split"):
        scan_pool([str(write_store(tmp_path / "t", "r1", 1, 1))], SHAPE, 10, 0.3, 0)


def parts_of(rows: torch.Tensor, size: int, reads: list):
    def passes():
        reads.append(0)
        for start in range(0, len(rows), size):
            reads[-1] += len(rows[start:start + size])
            yield rows[start:start + size].numpy()
    return passes


def test_a_window_that_fits_holds_the_whole_share_once():
    rows = torch.randint(0, 256, (50, 1, 8, 8), dtype=torch.uint8)
    reads = []
    window = CounterfeitWindow(parts_of(rows, 16, reads), 50, 50)
    assert window.fits and torch.equal(window.images(), rows.float() / 255) and reads == [50]


def values(window):
    return set(window[torch.arange(len(window))][:, 0, 0, 0].mul(255).round().int().tolist())


def test_a_larger_share_streams_through_the_window_once_per_epoch():
    rows = torch.arange(200, dtype=torch.uint8).view(200, 1, 1, 1).expand(200, 1, 2, 2).contiguous()
    reads = []
    window = CounterfeitWindow(parts_of(rows, 7, reads), 200, 30)
    assert not window.fits
    for epoch in range(2):
        window.start_epoch(steps=10)
        held = [values(window)]
        for _ in range(10):
            window.step()
            held.append(values(window))
            assert len(window) == 30  # never more than the capacity
        window.finish_epoch()
        assert reads[-1] == 200  # the whole pass, once
        assert held[0] == set(range(30))  # the first rows of the pass first ...
        assert held[5] == set(range(85, 115))  # ... paced over the epoch's steps ...
        assert held[-1] == set(range(170, 200))  # ... the last ones after the last step
    assert len(reads) == 2


def test_reject_mode_needs_the_pool_to_fit():
    rows = torch.zeros(40, 1, 8, 8, dtype=torch.uint8)
    window = CounterfeitWindow(parts_of(rows, 8, []), 40, 10)
    with pytest.raises(CccError, match="pool_rows_per_worker"):
        window.images()
