"""`generate` on a local multi-node cluster: rows/s with 1 and 2 Ray Data actors (issue 16, item 3).

    python benchmarks/generate_actors_multinode.py [--per-class 2000] [--repeats 2]

Starts a local cluster as `tests/platform/test_platform_multinode.py` does (`ray.cluster_utils.Cluster`:
a head with no CPU for the driver, two worker nodes with 1 CPU each, every node its own raylet), trains a
digits classifier and a network-inversion generator for a few steps in this process (as the tests'
fixtures), then runs `generate_from_file` for `--per-class` x 10 samples with `generate.num_actors` 1
and 2, alternating, and reports per run: wall seconds (whole call: actor start, sampling, keep rule,
Parquet write), samples/s and kept rows/s, which nodes the sampling actors ran on, and whether the two
runs wrote identical rows (ids and images).

All nodes share this machine's cores: on a 2-core machine two 1-CPU nodes are the whole machine, so the
figure shows that the rows are spread and identical, not how generation scales.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

try:
    import ccc_ray  # noqa: F401
except ImportError:  # run from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def train_files(work: Path) -> tuple[Path, Path]:
    """A quickly trained digits classifier and an inversion generator bound to it (the tests' fixtures)."""
    import torch

    from ccc_ray.classifiers.build import ClassifierConfig, build_classifier
    from ccc_ray.classifiers.training import train_epoch
    from ccc_ray.classifiers.weights import load_classifier, save_classifier
    from ccc_ray.data.sources import DataConfig, load_dataset
    from ccc_ray.methods import MethodContext
    from ccc_ray.methods.generator_file import save_generator
    from ccc_ray.methods.inversion import InversionConfig, NetworkInversion

    digits = load_dataset(DataConfig())
    torch.manual_seed(0)
    config = ClassifierConfig(epochs=3)
    model = build_classifier(config, digits.image_shape, digits.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(digits.train_images, digits.train_labels),
                                         batch_size=64, shuffle=True, generator=torch.Generator().manual_seed(0))
    for _ in range(config.epochs):
        train_epoch(model, loader, optimizer, torch.device("cpu"), 1, torch.Generator().manual_seed(1))
    classifier_file = work / "classifier.safetensors"
    save_classifier(classifier_file, model, config, digits.image_shape, list(digits.class_names), "digits")
    classifier, info = load_classifier(classifier_file)
    classifier.requires_grad_(False)
    method = NetworkInversion(InversionConfig(batch_size=64, steps=20),
                              MethodContext(digits.image_shape, digits.num_classes, classifier))
    for step in range(20):
        method.training_step(None, torch.Generator().manual_seed(step), 64)
    generator_file = work / "generator-inversion.safetensors"
    save_generator(generator_file, method, list(digits.class_names), info.sha256)
    return classifier_file, generator_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=2000, help="samples per class (default 2,000: 20,000)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each actor count, alternating")
    args = parser.parse_args()

    import pyarrow.parquet as pq
    import ray
    from ray.cluster_utils import Cluster

    from ccc_ray.job import load_job
    from ccc_ray.orchestration.generation import generate_from_file

    ray_tmp = tempfile.mkdtemp(prefix="ccc-mn-", dir="/tmp")  # short socket paths, and not /tmp/ray
    os.environ["RAY_TMPDIR"] = ray_tmp
    temp_dir = os.path.join(ray_tmp, "ray")
    os.makedirs(temp_dir)
    work = Path(tempfile.mkdtemp(prefix="ccc-gen-actors-"))
    cluster = Cluster()
    try:
        classifier_file, generator_file = train_files(work)
        head = cluster.add_node(num_cpus=0, temp_dir=temp_dir, include_dashboard=False)
        workers = {cluster.add_node(num_cpus=1, temp_dir=temp_dir).node_id for _ in range(2)}
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
        tables, runs = {}, {1: [], 2: []}
        for repeat in range(args.repeats):
            for actors in (1, 2):
                run = work / f"r{repeat}-a{actors}" / "default"
                run.mkdir(parents=True)
                shutil.copy(generator_file, run / "generator-inversion.safetensors")
                job = load_job(None, {"run.output_dir": str(run.parent), "run.classifier_path": str(classifier_file),
                                      "generate.per_class": args.per_class, "generate.num_actors": actors,
                                      "keep.confidence_bar": 0.3})
                known = set(ray._private.state.actors())
                started = time.perf_counter()
                report = generate_from_file(job, progress=False)
                seconds = time.perf_counter() - started
                samplers = [actor for key, actor in ray._private.state.actors().items()
                            if key not in known and "MapWorker" in actor["ActorClassName"]]
                nodes = sorted({"worker" if a["Address"]["NodeID"] in workers else
                                "head" if a["Address"]["NodeID"] == head.node_id else "?" for a in samplers})
                tables[actors] = pq.read_table(report.store_file, columns=["id", "image"])
                result = {"actors": actors, "repeat": repeat, "seconds": seconds, "samples": report.sampled,
                          "kept": report.kept, "samples_per_s": report.sampled / seconds,
                          "kept_rows_per_s": report.kept / seconds,
                          "actor_nodes": [a["Address"]["NodeID"][:8] for a in samplers], "node_kinds": nodes}
                runs[actors].append(result)
                print(json.dumps(result), flush=True)
            same = tables[1].equals(tables[2])
            print(json.dumps({"repeat": repeat, "identical_rows_1_vs_2_actors": same}), flush=True)
        for actors, results in runs.items():
            print(f"{actors} actor(s): median {statistics.median(r['seconds'] for r in results):6.1f} s, "
                  f"{statistics.median(r['samples_per_s'] for r in results):7.0f} samples/s, "
                  f"{statistics.median(r['kept_rows_per_s'] for r in results):7.0f} kept rows/s "
                  f"({results[0]['kept']:,} of {results[0]['samples']:,} kept), actors on nodes "
                  f"{sorted({n for r in results for n in r['actor_nodes']})}", flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
