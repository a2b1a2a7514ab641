"""GPU path check without Ray: the core on CUDA end to end, and the ONNX provider choice.

    python benchmarks/gpu_smoke.py [--steps 300]

Trains a digits SmallCNN and the inversion generator on CUDA (when present), generates counterfeits
with the classifier on CUDA, exports the model to ONNX and checks parity, and prints which onnxruntime
providers `choose_providers` picked. Prints the generator's steps per second on CUDA and on the CPU.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="generator steps per device (default 300)")
    args = parser.parse_args()

    from ccc_ray.classifiers.build import ClassifierConfig, build_classifier
    from ccc_ray.classifiers.training import accuracy, train_epoch
    from ccc_ray.data.sources import DataConfig, load_dataset
    from ccc_ray.export.onnx_export import check_parity, export_onnx
    from ccc_ray.export.onnx_runtime import OnnxClassifier, choose_providers
    from ccc_ray.counterfeits.generate import generate_counterfeits
    from ccc_ray.methods import MethodContext
    from ccc_ray.methods.inversion import InversionConfig, NetworkInversion

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"torch {torch.__version__}, device {device}"
          + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""))
    data = load_dataset(DataConfig())
    torch.manual_seed(0)
    config = ClassifierConfig()
    model = build_classifier(config, data.image_shape, data.num_classes).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.train_images, data.train_labels),
                                         batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    for _ in range(20):
        train_epoch(model, loader, optimizer, device, 1, torch.Generator().manual_seed(0))
    print(f"classifier on {device}: test accuracy {accuracy(model, data.test_images, data.test_labels, device):.4f}")
    model.eval().requires_grad_(False)
    rates = {}
    for name in ([device.type, "cpu"] if device.type == "cuda" else ["cpu"]):
        target = torch.device(name)
        classifier = model.to(target)
        config = InversionConfig(steps=args.steps)
        method = NetworkInversion(config, MethodContext(data.image_shape, data.num_classes, classifier, target))
        method.training_step(None, torch.Generator(device=target).manual_seed(0), config.batch_size)
        if target.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for step in range(args.steps):
            method.training_step(None, torch.Generator(device=target).manual_seed(step + 1), config.batch_size)
        if target.type == "cuda":
            torch.cuda.synchronize()
        rates[name] = args.steps / (time.perf_counter() - start)
        print(f"generator on {name}: {rates[name]:.1f} steps/s (batch {config.batch_size})")
        if name == device.type:
            trained = method
    model.to(device)
    with tempfile.TemporaryDirectory() as folder:
        report = generate_counterfeits(trained, model, "gpu-smoke", data, store_dir=Path(folder), run_id="gpu",
                                       per_class=100, confidence_bar=0.99, seed=1, batch_size=1000, run_metadata={},
                                       device=device, progress=False)
        print(f"generate on {device}: kept {report.kept}/{report.sampled}, distance ratio {report.distance_ratio:.2f}")
        path = Path(folder) / "model.onnx"
        export_onnx(model, path, list(data.class_names), data.image_shape)
        runtime = OnnxClassifier(path)
        gap = check_parity(model, runtime, data.test_images)
        print(f"ONNX export from a {device} model: parity {gap:.2e}; choose_providers() -> {choose_providers()}; "
              f"session providers {runtime.providers}")
    if len(rates) == 2:
        print(f"generator speed-up cuda / cpu: {rates['cuda'] / rates['cpu']:.1f}x")


if __name__ == "__main__":
    main()
