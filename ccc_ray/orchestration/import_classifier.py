"""`import-classifier`: adopt a model trained elsewhere as the run's classifier, without training it.

The model is `classifier.arch` (a torchvision name or `package.module:factory`) with the weights of
`classifier.weights`, behind the input preprocessing the config declares (`classifier.input_range`,
`mean`, `std`, `grey_to_rgb`). It is scored on the run's test split, so a wrong preprocessing shows as
a low accuracy right here, and written as the run's classifier file with its fingerprint; every later
stage (train-generator, generate, attack, harden, export) then treats it like a classifier ccc-ray trained.

Runs in the calling process (on a GPU when present): one pass over the test split needs no Ray workers.
"""

from __future__ import annotations

import json
from ccc_ray.classifiers.build import build_classifier
from ccc_ray.classifiers.inference import default_device
from ccc_ray.classifiers.preprocessing import Preprocessed
from ccc_ray.classifiers.training import accuracy
from ccc_ray.classifiers.weights import ClassifierInfo, load_initial_weights, save_classifier
from ccc_ray.data.sources import load_dataset
from ccc_ray.errors import CccError
from ccc_ray.job import JobConfig
from ccc_ray.store.files import atomic_write_bytes, ensure_writable_dir


def import_classifier(job: JobConfig) -> tuple[ClassifierInfo, dict]:
    """Write the user's trained model to `run.classifier_file`; returns its info and the summary recorded
    in `<run>/import-classifier.json` (source, preprocessing, fingerprint, test accuracy)."""
    config = job.classifier
    if not config.weights:
        raise CccError("classifier.weights: import-classifier adopts a trained model; give its weights file "
                       "(--classifier.weights FILE: .safetensors or a .pt state dict)")
    dataset = load_dataset(job.data)
    model = build_classifier(config, dataset.image_shape, dataset.num_classes)
    load_initial_weights(model, config, dataset.image_shape, dataset.num_classes)
    output = job.run.classifier_file
    ensure_writable_dir(output.parent, "run.classifier_path")
    run_dir = ensure_writable_dir(job.run.run_dir, "run.output_dir")
    device = default_device()
    test_accuracy = accuracy(model.to(device), dataset.test_images, dataset.test_labels, device)
    info = save_classifier(output, model.cpu(), config, dataset.image_shape, list(dataset.class_names),
                           job.data.name)
    summary = {"classifier_file": str(output), "classifier_sha256": info.sha256, "source_weights": config.weights,
               "arch": config.arch, "data": job.data.name, "test_images": len(dataset.test_labels),
               "test_accuracy": test_accuracy,
               "preprocessing": {"input_range": config.input_range, "mean": config.mean, "std": config.std,
                                 "grey_to_rgb": isinstance(model, Preprocessed) and model.grey_to_rgb}}
    atomic_write_bytes(run_dir / "import-classifier.json", json.dumps(summary, indent=2).encode())
    return info, summary
