"""`ccc-ray attack` end to end through Ray: actors, gathered results, the store and its lineage."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ccc_ray import cli
from ccc_ray.classifiers.weights import load_classifier
from ccc_ray.hardening.counterfeits import split_counterfeits
from ccc_ray.counterfeits.quality import nearest_distances
from ccc_ray.store.reader import read_store, table_images
from ccc_ray.store.schema import RUN_METADATA_KEY

pytestmark = pytest.mark.slow
torch.set_num_threads(1)


def test_direct_encoding_attack_writes_confident_counterfeits_with_lineage(
        ray_cluster, capsys, tmp_path, digits, digits_classifier_file):
    argv = ["attack", "--run.output_dir", str(tmp_path), "--run.classifier_path", str(digits_classifier_file),
            "--attack.method", "direct_encoding", "--attack.per_class", "2", "--attack.class_groups", "2",
            "--direct_encoding.max_generations", "400", "--attack.seed", "3", "--keep.confidence_bar", "0.9"]
    assert cli.main([*argv, "--attack.num_tasks", "2"]) == 0
    out = capsys.readouterr().out
    assert "4 run(s)" in out and "on 2 actor(s)" in out
    store = tmp_path / "default" / "counterfeits" / "direct_encoding-default.parquet"
    table = read_store(store, digits.image_shape, digits.num_classes)
    # Two runs per class, each class fooled in both: the 3-epoch classifier reaches 0.9 within about 120 generations
    # (0.99 takes it over 1,000 generations for some classes; tests/methods fools a 10-epoch one at 0.99).
    assert table.num_rows == 20
    assert sorted(table["target"].to_pylist()) == sorted(list(range(10)) * 2)
    assert set(table["method"].to_pylist()) == {"direct_encoding"}
    confidence = np.asarray(table["confidence"].to_pylist())
    assert (confidence >= 0.9).all()
    # Lineage: the classifier's fingerprint, the run seeds, the distance to the training data, the settings.
    model, info = load_classifier(digits_classifier_file)
    assert set(table["classifier_sha256"].to_pylist()) == {info.sha256}
    metadata = json.loads(pq.read_schema(store).metadata[RUN_METADATA_KEY])
    assert metadata["attack"]["method"] == "direct_encoding" and metadata["attack"]["per_class"] == 2
    assert set(table["seed"].to_pylist()) == {run["seed"] for run in metadata["runs"]}
    images = table_images(table)
    with torch.no_grad():
        scored = torch.softmax(model(images), 1)[torch.arange(20), torch.tensor(table["target"].to_pylist())]
    np.testing.assert_allclose(scored.numpy(), confidence, atol=1e-5)  # the stored image has the stored confidence
    np.testing.assert_allclose(nearest_distances(images, digits.train_images).numpy(),
                               table["nearest_train_l2"].to_pylist(), rtol=1e-5)
    report = json.loads((tmp_path / "default" / "attack-direct_encoding.json").read_text())
    assert report["kept"] == 20 and all(len(g) == 2 and min(g) >= 0
                                        for g in report["generations_to_threshold"].values())
    # `harden` pools it like any store.
    split = split_counterfeits([store], digits.image_shape, digits.num_classes, 0.3, 0)
    assert len(split.train_ids) + len(split.eval_ids) == 20

    # The same attack on one actor: the same counterfeits, replacing the file rather than adding rows.
    assert cli.main([*argv, "--attack.num_tasks", "1"]) == 0
    again = read_store(store)
    assert sorted(again["id"].to_pylist()) == sorted(table["id"].to_pylist())
    order, again_order = np.argsort(table["id"].to_pylist()), np.argsort(again["id"].to_pylist())
    assert torch.equal(table_images(again)[again_order], images[order])
