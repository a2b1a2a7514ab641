"""The defences tried for issue 24, side by side on one hardened model: the same fine-tuned classifier behind
each guard setting, judged by the scorecard at a stated budget.

    python benchmarks/guard_variants.py ccc-runs/default [--scales 10] [--families real_pgd,real_square,...]

Takes the pipeline's hardened classifier, unwraps its guard, and writes one classifier file per variant
under RUN/variants/ (guard kind, edge percentile, sharpening target), then runs `ccc-ray scorecard` on each
(white box) and prints one Markdown row per variant: clean accuracy, the share of real test images
answered >= the bar on their own class, and every family's worst-judge success rate.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from confidently_wrong import clean_figures  # noqa: E402

from ccc_ray import cli  # noqa: E402
from ccc_ray.classifiers.guard import ClassDataGuard, DataGuard, unguarded  # noqa: E402
from ccc_ray.classifiers.weights import load_classifier, save_classifier  # noqa: E402
from ccc_ray.data.sources import DataConfig, load_dataset  # noqa: E402

VARIANTS = ("none,pixels-90,class-90,class-95,class-90-sharp95,class-95-sharp95,class-97-sharp95,"
            "class-95-margin95-sharp95,class-95-margin90-sharp95,class-97-margin97-sharp97")


def parse_variant(name: str) -> tuple[str | None, float, float, float]:
    """'none', 'pixels-E' or 'class-E[-marginM][-sharpS]' -> (guard kind, edge percentile, margin percentile
    (0: none), share of training images sharpened to the bar (0: not))."""
    parts = name.split("-")
    if parts[0] == "none":
        return None, 0.0, 0.0, 0.0
    kind = {"pixels": "pixels", "class": "class_pixels"}[parts[0]]
    margin = next((float(p[6:]) for p in parts if p.startswith("margin")), 0.0)
    share = next((float(p[5:]) / 100 for p in parts if p.startswith("sharp")), 0.0)
    return kind, float(parts[1]), margin, share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--scales", default="10")
    parser.add_argument("--families", default="direct_encoding,cppn,gradient_ascent,real_pgd,real_square")
    parser.add_argument("--variants", default=VARIANTS, help="comma-separated: none, pixels-E, "
                                                              "class-E[-marginM][-sharpS]")
    parser.add_argument("--data", default="digits")
    args, extra = parser.parse_known_args()
    run = args.run.absolute()
    report = json.loads((run / "report.json").read_text())
    dataset = load_dataset(DataConfig(name=args.data))
    model, info = load_classifier(report["hardened"], dataset.image_shape, dataset.num_classes)
    inner = unguarded(model).eval()
    bar = report.get("confidence_bar", 0.99)
    print("| variant | clean accuracy | real >= bar | temperature | " + " | ".join(args.families.split(",")) + " |")
    print("|---|---|---|---|" + "---|" * len(args.families.split(",")))
    for name in args.variants.split(","):
        kind, edge, margin, share = parse_variant(name)
        if kind == "pixels":
            variant = DataGuard.fit(inner, dataset.train_images, edge, 99.9, 0.98, info.reject_class)
        elif kind == "class_pixels":
            variant = ClassDataGuard.fit(inner, dataset.train_images, dataset.train_labels, edge, 99.9, 0.98,
                                         info.reject_class)
            if margin:
                variant.with_margin(dataset.train_images, dataset.train_labels, margin, 99.9)
        else:
            variant = inner
        if share:
            variant.sharpen(dataset.train_images, dataset.train_labels, bar, share)
        file = run / "variants" / f"{name}.safetensors"
        file.parent.mkdir(parents=True, exist_ok=True)
        save_classifier(file, variant.eval(), info.config, dataset.image_shape, list(dataset.class_names),
                        info.data_name, info.reject_class)
        code = cli.main(["scorecard", str(file), "--run.output_dir", str(run / "variants"), "--run.run_id", name,
                         "--run.classifier_path", str(run / "classifier.safetensors"), "--data.name", args.data,
                         "--scorecard.families", args.families, "--scorecard.budget_scales", args.scales, *extra])
        if code != 0:
            raise SystemExit(f"scorecard of {name} failed ({code})")
        card = json.loads((run / "variants" / name / "scorecard.json").read_text())
        clean = clean_figures(file, dataset, bar)
        rates = {(row["family"], row["budget_scale"]): row["success_rate"] for row in card["families"]}
        cells = " | ".join("/".join(f"{100 * rates[(family, float(scale))]:.0f}%" for scale in args.scales.split(","))
                           for family in args.families.split(","))
        temperature = float(getattr(variant, "temperature", 1.0))
        print(f"| {name} | {100 * clean['clean_accuracy']:.2f}% | {100 * clean['real_at_bar']:.1f}% | "
              f"{temperature:.3f} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
