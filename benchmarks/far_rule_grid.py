"""The far rule on a run's counterfeits: how many are far, and a grid of far (counted) vs near (not counted).

    python benchmarks/far_rule_grid.py --run-dir ccc-runs/default --out docs/figures/far-rule-grid.png

Reads the run's counterfeit store (every row is confident by the keep rule), fits the far rule
(`ccc_ray/counterfeits/far.py`, `--percentile`, `--space`) on the run's data, and draws four rows of
images, each with its nearest-training distance: counterfeits judged far (the closest to the radius
first, since those show where the line falls) and near; probes that straddle the line (training digits
with pixel noise, blends of two training digits) judged far and near; held-out real digits just inside
the radius, and their nearest training images. Prints the counts as JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ccc_ray.counterfeits.far import FarFromData, FarRule  # noqa: E402
from ccc_ray.counterfeits.quality import nearest_distances  # noqa: E402
from ccc_ray.data.sources import DataConfig, load_dataset  # noqa: E402
from ccc_ray.store.reader import read_store, table_images  # noqa: E402

COLUMNS = 12
PROBES = 200  # of each kind: noisy training digits, blends of two training digits


def draw(rows: list[tuple[str, torch.Tensor, torch.Tensor]], radius: float, space: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(len(rows), COLUMNS, figsize=(COLUMNS * 0.9, len(rows) * 1.15), squeeze=False)
    for row, (label, images, distances) in enumerate(rows):
        for column in range(COLUMNS):
            axis = axes[row][column]
            axis.set_xticks([])
            axis.set_yticks([])
            if column < len(images):
                picture = images[column].permute(1, 2, 0).numpy()
                axis.imshow(picture[..., 0] if picture.shape[2] == 1 else picture, cmap="gray", vmin=0, vmax=1)
                axis.set_title(f"{float(distances[column]):.2f}", fontsize=7)
            if column == 0:
                axis.set_ylabel(label, rotation=0, labelpad=40, va="center", fontsize=7)
    figure.suptitle(f"far rule: nearest-training distance >= {radius:.2f} ({space}); number = distance", fontsize=9)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", required=True, help="a pipeline run folder (with counterfeits/)")
    parser.add_argument("--store", default=None, help="store file or folder (default: RUN/counterfeits)")
    parser.add_argument("--percentile", type=float, default=FarRule().percentile)
    parser.add_argument("--space", default="auto", choices=["auto", "pixels", "features"])
    parser.add_argument("--out", default="far-rule-grid.png")
    args = parser.parse_args()
    dataset = load_dataset(DataConfig())
    classifier = None
    if args.space == "features":
        from ccc_ray.classifiers.weights import load_classifier

        classifier, _ = load_classifier(Path(args.run_dir) / "classifier.safetensors")
    far = FarFromData.fit(FarRule(percentile=args.percentile, space=args.space), dataset.train_images,
                          dataset.test_images, classifier)
    table = read_store(args.store or Path(args.run_dir) / "counterfeits", dataset.image_shape, dataset.num_classes)
    images = table_images(table)
    distances = far.nearest(images)
    is_far = distances >= far.radius
    far_order = torch.argsort(torch.where(is_far, distances, torch.inf))  # closest-to-the-line far ones first
    near_order = torch.argsort(torch.where(is_far, -torch.inf, distances), descending=True)
    # Probes that straddle the line: training digits with pixel noise, and blends of two training digits.
    generator = torch.Generator().manual_seed(0)
    picks = torch.randint(len(dataset.train_images), (2, PROBES), generator=generator)
    sigma = torch.rand(PROBES, 1, 1, 1, generator=generator) * 0.3
    noisy = (dataset.train_images[picks[0]] + sigma * torch.randn(PROBES, *dataset.image_shape,
                                                                  generator=generator)).clamp(0, 1)
    weight = torch.rand(PROBES, 1, 1, 1, generator=generator) * 0.6 + 0.2
    blends = weight * dataset.train_images[picks[0]] + (1 - weight) * dataset.train_images[picks[1]]
    probes = torch.cat([noisy, blends])
    probe_distances = far.nearest(probes)
    probe_far = probe_distances >= far.radius
    probe_far_order = torch.argsort(torch.where(probe_far, probe_distances, torch.inf))
    probe_near_order = torch.argsort(torch.where(probe_far, -torch.inf, probe_distances), descending=True)
    real = far.held_out_distances
    inside = torch.argsort(torch.where(real < far.radius, real, -torch.inf), descending=True)[:COLUMNS]
    nearest_train = torch.cdist(dataset.test_images[inside].flatten(1), dataset.train_images.flatten(1)).argmin(1)
    n_far, n = int(is_far.sum()), len(images)
    rows = [(f"counterfeits:\nfar, count\n({n_far} of {n})", images[far_order[:int(is_far.sum())]], distances[far_order]),
            (f"counterfeits:\nnear, do not\n({n - n_far} of {n})", images[near_order[:int((~is_far).sum())]], distances[near_order]),
            ("probes: far\n(count)", probes[probe_far_order[:int(probe_far.sum())]], probe_distances[probe_far_order]),
            ("probes: near\n(do not)", probes[probe_near_order[:int((~probe_far).sum())]],
             probe_distances[probe_near_order]),
            ("held-out real,\njust inside", dataset.test_images[inside], real[inside]),
            ("their nearest\ntraining image", dataset.train_images[nearest_train], real[inside])]
    draw(rows, far.radius, far.space, Path(args.out))
    test_far = float((real >= far.radius).double().mean())
    print(json.dumps({"store_rows": len(images), "far": int(is_far.sum()), "near": int((~is_far).sum()),
                      "far_share": float(is_far.double().mean()), **far.describe(),
                      "probes": len(probes), "probes_far": int(probe_far.sum()),
                      "held_out_far_share": test_far,
                      "counterfeit_median_distance": float(distances.median()),
                      "held_out_median_distance": float(real.median()),
                      "train_self_check": float(nearest_distances(dataset.train_images[:5],
                                                                  dataset.train_images).max()),
                      "figure": str(args.out)}, indent=2))


if __name__ == "__main__":
    main()
