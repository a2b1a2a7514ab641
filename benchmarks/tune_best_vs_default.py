"""Does the tuned config beat the defaults on a fresh seed? Retrain both and score them the same way.

    python benchmarks/tune_best_vs_default.py RUN_DIR [--seed 7]

RUN_DIR is a run folder after `ccc-ray tune` (it holds classifier.safetensors and tune-best.yaml). Both
generators are trained with `ccc-ray train-generator` on a generator seed no trial used, sampled with
`ccc-ray generate` (100 per class), and scored with the tune objective from the generate report.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from ccc_ray.tuning.objective import objective_parts


def train_and_score(label: str, run_dir: Path, seed: int, config: list[str]) -> dict:
    common = ["--run.output_dir", str(run_dir / "retrain"), "--run.run_id", f"{label}-seed{seed}",
              "--run.classifier_path", str(run_dir / "classifier.safetensors")]
    # The generator seed is a training setting: `generate` has no --inversion.* flags (it samples with generate.seed).
    for stage, extra in (("train-generator", ["--inversion.seed", str(seed)]), ("generate", [])):
        subprocess.run([sys.executable, "-m", "ccc_ray.cli", stage, *config, *common, *extra], check=True,
                       stdout=subprocess.DEVNULL)
    report = json.loads((run_dir / "retrain" / f"{label}-seed{seed}" / "generate-inversion.json").read_text())
    return objective_parts(report["kept_share"], report["distance_ratio"],
                           min(report["diversity_ratio_per_class"].values()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--seed", type=int, default=7, help="generator seed for both retrainings (default 7)")
    args = parser.parse_args()
    best = train_and_score("best", args.run_dir, args.seed, ["--config", str(args.run_dir / "tune-best.yaml")])
    default = train_and_score("default", args.run_dir, args.seed, [])
    print(f"{'config':<8} {'objective':>9} {'kept':>6} {'distance':>9} {'min diversity':>14}")
    for label, parts in (("best", best), ("default", default)):
        print(f"{label:<8} {parts['objective']:>9.4f} {parts['kept_share']:>6.3f} {parts['distance_ratio']:>9.2f} "
              f"{parts['min_diversity_ratio']:>14.2f}")


if __name__ == "__main__":
    main()
