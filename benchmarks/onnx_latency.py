"""onnxruntime vs torch eager latency of the exported classifier, batch 1 and batch 256, same machine.

    python benchmarks/onnx_latency.py [--classifier FILE] [--repeats 200] [--threads 1]

Times both back to back in one process, interleaved per repeat so machine noise hits both alike, and
prints the median latency of each and the ratio of medians (torch / onnxruntime: > 1 means ONNX faster).
Without --classifier it trains a digits SmallCNN for a few epochs (no Ray) to have something to time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def quick_classifier():
    from ccc_ray.classifiers.build import ClassifierConfig, build_classifier
    from ccc_ray.classifiers.training import train_epoch
    from ccc_ray.data.sources import DataConfig, load_dataset

    data = load_dataset(DataConfig())
    config = ClassifierConfig()
    model = build_classifier(config, data.image_shape, data.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.train_images, data.train_labels),
                                         batch_size=64, shuffle=True)
    for _ in range(3):
        train_epoch(model, loader, optimizer, torch.device("cpu"), 1, torch.Generator().manual_seed(0))
    return model.eval(), data.image_shape, list(data.class_names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classifier", help="a ccc-ray classifier file (default: train a quick digits CNN)")
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per batch size (default 200)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for both runtimes (default 1)")
    args = parser.parse_args()

    from ccc_ray.classifiers.weights import load_classifier
    from ccc_ray.export.onnx_export import export_onnx
    from ccc_ray.export.onnx_runtime import OnnxClassifier

    torch.set_num_threads(args.threads)
    if args.classifier:
        model, info = load_classifier(args.classifier)
        shape, names = info.image_shape, list(info.class_names)
        names_out = info.num_outputs
    else:
        model, shape, names = quick_classifier()
        names_out = len(names)
    reject = names_out > len(names)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        export_onnx(model, path, names, shape, "max_softmax", None, reject)
        session = OnnxClassifier(path, providers=["CPUExecutionProvider"], num_threads=args.threads)
        print(f"torch {torch.__version__}, threads {args.threads}, input {shape}, providers {session.providers}")
        print(f"{'batch':>6} {'torch ms':>10} {'onnxrt ms':>10} {'torch/onnxrt':>13}")
        for batch in (1, 256):
            images = torch.rand(batch, *shape)
            with torch.no_grad():
                for _ in range(10):  # warm-up
                    model(images)
                    session(images)
                torch_times, onnx_times = [], []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    model(images)
                    torch_times.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    session(images)
                    onnx_times.append(time.perf_counter() - start)
            t, o = statistics.median(torch_times) * 1e3, statistics.median(onnx_times) * 1e3
            print(f"{batch:>6} {t:>10.4f} {o:>10.4f} {t / o:>13.2f}")


if __name__ == "__main__":
    main()
