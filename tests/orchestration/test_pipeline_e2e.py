"""A reduced `jobs/pipeline.py` end to end: every stage, every artifact, through the job entry point."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pyarrow.parquet as pq
import pytest
from PIL import Image

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_reduced_pipeline_writes_every_artifact(tmp_path):
    args = [sys.executable, str(REPO / "jobs" / "pipeline.py"), "--run.output_dir", str(tmp_path),
            "--run.run_id", "e2e", "--classifier.epochs", "8", "--inversion.steps", "150",
            "--inversion.batch_size", "128", "--run.checkpoint_every", "50", "--generate.per_class", "20",
            "--keep.confidence_bar", "0.9", "--harden.epochs", "3", "--harden.reattack_steps", "60",
            "--harden.real_ood_per_set", "50", "--rounds", "1", "--scorecard.per_class", "1",
            "--scorecard.generator_steps", "5", "--scorecard.generations", "3", "--gradient_ascent.steps", "10"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run = tmp_path / "e2e"
    for name in ("classifier.safetensors", "generator-inversion.safetensors", "report.json", "report.md",
                 "counterfeits.png", "roc-before.png", "roc-after.png", "classifier-hardened.onnx"):
        assert (run / name).is_file(), name
    report = json.loads((run / "report.json").read_text())
    assert [row["round"] for row in report["rounds"]] == [0, 1]
    assert all(row["scorecard"] for row in report["rounds"])  # the scorecard of every round, by default
    assert report["rounds"][1]["guard"]["reference_images"] > 1000  # the default data guard, fitted
    assert {"counterfeits_held_out", "photo_patches", "letters"} <= set(report["rounds"][1]["ood"])
    parity = report["export"]["parity_max_abs_probability_difference"]
    assert max(parity.values()) <= 1e-5
    assert "| 1 |" in (run / "report.md").read_text()
    rows = pq.read_table(run / "counterfeits" / "inversion-e2e.parquet")
    assert rows.num_rows > 0 and set(rows["method"].to_pylist()) == {"inversion"}
    split = json.loads((run / "rounds" / "e2e.r1" / "counterfeit-split.json").read_text())
    assert not set(split["train_ids"]) & set(split["held_out_ids"])
    model = onnx.load(str(run / "classifier-hardened.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["ccc_ray.reject_class"]) is True and props["ccc_ray.ood_score"] == '"not_reject"'
    with Image.open(run / "counterfeits.png") as grid:
        assert grid.size[0] > 100 and grid.size[1] > 100
