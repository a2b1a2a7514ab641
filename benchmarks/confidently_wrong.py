"""Issue 24's figures: how often the baseline and the hardened model are confidently wrong, judged by the
judges (not by the model, not by the defence's distance), at 1x and 10x the scorecard's budget, white box
(torch file) and black box (the exported ONNX file).

    python benchmarks/confidently_wrong.py ccc-runs/default [--scales 1,10] [--data.name digits ...]

After `ccc-ray pipeline`, runs `ccc-ray scorecard` on the baseline classifier, on the hardened one and on
its ONNX export, each in a run folder of its own under RUN/judged/ (the baseline classifier stays the far
rule's reference), then prints one Markdown table: per family and budget, the success rate under each judge
and the worst of them, beside the clean figures a user sees first (clean accuracy, the share of real test
images answered >= the bar on their own class) and the judges' own held-out accuracy. Extra flags go to
every scorecard call unchanged (e.g. --data.name mnist_5k).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ccc_ray import cli  # noqa: E402
from ccc_ray.classifiers.training import predict_logits  # noqa: E402
from ccc_ray.classifiers.weights import load_classifier  # noqa: E402
from ccc_ray.data.sources import DataConfig, load_dataset  # noqa: E402


def clean_figures(model_file: Path, dataset, bar: float) -> dict:
    model, _ = load_classifier(model_file, dataset.image_shape, dataset.num_classes)
    probabilities = torch.softmax(predict_logits(model.eval(), dataset.test_images), dim=1)
    own = probabilities.gather(1, dataset.test_labels[:, None]).squeeze(1)
    k = dataset.num_classes
    return {"clean_accuracy": float((probabilities[:, :k].argmax(1) == dataset.test_labels).float().mean()),
            "real_at_bar": float((own >= bar).float().mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the pipeline's run folder (holds classifier.safetensors, report.json)")
    parser.add_argument("--scales", default="1,10")
    parser.add_argument("--models", default="baseline,hardened,onnx")
    args, extra = parser.parse_known_args()
    run = args.run.absolute()
    report = json.loads((run / "report.json").read_text())
    models = {"baseline": run / "classifier.safetensors", "hardened": Path(report["hardened"]),
              "onnx": run / "classifier-hardened.onnx"}
    data_name = extra[extra.index("--data.name") + 1] if "--data.name" in extra else "digits"
    dataset = load_dataset(DataConfig(name=data_name))
    bar = report.get("confidence_bar", 0.99)
    rows, clean = [], {}
    for label in args.models.split(","):
        start = time.perf_counter()
        code = cli.main(["scorecard", str(models[label]), "--run.output_dir", str(run / "judged"),
                         "--run.run_id", label, "--run.classifier_path", str(run / "classifier.safetensors"),
                         "--scorecard.budget_scales", args.scales, *extra])
        if code != 0:
            raise SystemExit(f"scorecard of {label} failed ({code})")
        card = json.loads((run / "judged" / label / "scorecard.json").read_text())
        print(f"# {label}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
        if label != "onnx":
            clean[label] = clean_figures(models[label], dataset, bar)
        for row in card["families"]:
            rows.append((label, row, card["judges"]))
    judges = [j["name"] for j in rows[0][2]] if rows else []
    print("| model | family | budget | " + " | ".join(judges) + " | worst | confirmed share | evaluations |")
    print("|---|---|---|" + "---|" * len(judges) + "---|---|---|")
    for label, row, _ in rows:
        cells = " | ".join(f"{100 * row['judges'][j]['success_rate']:.0f}%" for j in judges)
        print(f"| {label} | {row['family']} | {row['budget_scale']:g}x | {cells} | "
              f"**{100 * row['success_rate']:.0f}%** | {100 * row['confirmed_share']:.0f}% | {row['evaluations']:,} |")
    print()
    print("judges: " + "; ".join(f"{j['name']} {100 * j['accuracy']:.1f}% ({j['mechanism']})" for j in rows[0][2]))
    for label, figures in clean.items():
        print(f"{label}: clean accuracy {100 * figures['clean_accuracy']:.2f}%, real test images >= {bar} on their "
              f"class {100 * figures['real_at_bar']:.1f}%")
    last = report["rounds"][-1]["ood"]
    print("hardened held-out AUROC (" + report["score"] + "): " + ", ".join(
        f"{name} {metrics[report['score']]['auroc']:.4f}" for name, metrics in last.items()
        if report["score"] in metrics))


if __name__ == "__main__":
    main()
