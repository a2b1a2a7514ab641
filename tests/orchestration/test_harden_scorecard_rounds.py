"""`ccc-ray harden` with a scorecard per round: every family joins the pool, held-out AUROC per family, a
guarded model that no family fools far from the data, and a loop that stops once the pool stops changing
(reduced budgets)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from ccc_ray import cli
from ccc_ray.classifiers.guard import DataGuard
from ccc_ray.classifiers.weights import load_classifier
from ccc_ray.store import CounterfeitWriter, counterfeit_batch

pytestmark = pytest.mark.slow
torch.set_num_threads(1)


def noise_store(folder, n: int) -> None:
    """The run's own counterfeits: uniform noise, far from every digit."""
    images = np.random.default_rng(0).integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8)
    targets = np.arange(n) % 10
    with CounterfeitWriter(folder, "inversion", "card", {}, [str(i) for i in range(10)]) as writer:
        writer.write(counterfeit_batch(images, targets, targets, np.full(n, 0.995), np.full(n, 3.0), np.arange(n),
                                       run_id="card", method="inversion", classifier_sha256="ab" * 32, seed=1))


def test_every_family_joins_the_pool_and_the_guarded_round_is_not_fooled_far(ray_cluster, tmp_path, capsys,
                                                                              digits_classifier_file,
                                                                              digits_generator_file):
    run = tmp_path / "card"
    run.mkdir()
    shutil.copy(digits_classifier_file, run / "classifier.safetensors")
    shutil.copy(digits_generator_file, run / "generator-inversion.safetensors")
    noise_store(run / "counterfeits", 60)
    # A bar of 0.9 the 3-epoch test classifier can be fooled at, and a guard cap below it: the guarantee.
    code = cli.main(["harden", "--run.output_dir", str(tmp_path), "--run.run_id", "card",
                     "--keep.confidence_bar", "0.9", "--harden.guard_cap", "0.85", "--harden.epochs", "1",
                     "--harden.rounds", "2",
                     "--harden.outliers_per_step", "16", "--harden.pgd_steps", "2", "--harden.reattack_steps", "5",
                     "--harden.real_ood_per_set", "20", "--inversion.batch_size", "32",
                     "--scorecard.per_class", "2", "--scorecard.generator_steps", "5",
                     "--scorecard.generations", "15", "--gradient_ascent.steps", "40", "--judge.judges", "nearest"])
    assert code == 0, capsys.readouterr().err[-2000:]
    report = json.loads((run / "report.json").read_text())
    baseline, hardened = report["rounds"]

    # Round 0's scorecard: what it found confident and not of its target went to one store per family, pooled in
    # round 1.
    found = {family for family, row in baseline["scorecard"].items() if row["successes"]}
    assert found, baseline["scorecard"]  # the test classifier is fooled by some family at this budget
    stored = {path.name.split("-")[0]: path for path in (run / "rounds" / "card.r0" / "counterfeits").glob("*.parquet")}
    assert found <= set(stored)
    for family, path in stored.items():
        assert set(pq.read_table(path)["method"].to_pylist()) == {family}
    split = json.loads((run / "rounds" / "card.r1" / "counterfeit-split.json").read_text())
    assert {str(path) for path in stored.values()} <= set(split["stores"])

    # Held-out AUROC per family, on the same held-out rows for the baseline and the hardened round.
    per_family = {name for name in hardened["ood"] if name.startswith("counterfeits_held_out:")}
    assert "counterfeits_held_out:inversion" in per_family and len(per_family) >= 2
    assert per_family == {name for name in baseline["ood"] if name.startswith("counterfeits_held_out:")}

    # The hardened model is guarded, and no family of its scorecard succeeds far from the data (near the data the
    # judge decides: a sample the class-aware guard lets through lies next to real images of its target).
    model, info = load_classifier(hardened["model"])
    assert isinstance(model, DataGuard) and info.guard["cap"] == pytest.approx(0.85)
    assert hardened["guard"]["edge_distance"] < hardened["guard"]["reject_distance"]
    assert all(row["far_successes"] == 0 for row in hardened["scorecard"].values()), hardened["scorecard"]
    assert "Attack scorecard per round" in (run / "report.md").read_text()

    # Nothing far and confident was found against round 1, so the pool did not change: round 2 would repeat
    # round 1, and the loop says so and stops.
    assert report["stopped_after_round"] == 1 and report["rounds_asked"] == 2
    assert not (run / "rounds" / "card.r2").exists()
