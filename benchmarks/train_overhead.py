"""Ray Train's cost per classifier training step against a plain PyTorch loop (issue 16, item 6).

    python benchmarks/train_overhead.py [--epochs 15] [--skip 3] [--end-to-end 5,20] [--repeats 2]
        [--health-check-intervals 2,0.1] [--default-threads] [--json]

A step is one optimizer step of `train_epoch` (ccc_ray/classifiers/training.py): a batch of
`classifier.batch_size` (64) digits through the default SmallCNN, on the CPU. `train_classifier`
(ccc_ray/orchestration/train_classifier.py) runs, per epoch: `train_epoch` (23 steps over the 1,437
training digits), the test accuracy on 360 digits, then `ray.train.report` with a checkpoint.

Measured, in steady state (the first `--skip` epochs of each run left out, so start-up is excluded),
medians over epochs and repeats:

1. `plain`: the same setup and calls in this process without Ray: `train_epoch`, then the same per-epoch
   work a plain script would do (accuracy, `torch.save` of the state into a temporary folder), each timed;
   torch at 1 thread, what Ray gives a 1-CPU worker (OMP_NUM_THREADS=1). Every Ray run is paired with a
   plain run right before and one right after it, and compared with their mean: the development machine
   is shared and its load changes from minute to minute. (`--default-threads` adds one plain run at
   torch's default thread count, for reference.)
2. `ray/<variant>`: the same calls inside a `TorchTrainer` with 1 worker (1 CPU, as `--run.num_workers 1`),
   timed inside the loop per epoch: `train_epoch`, accuracy, and the per-epoch report. Variants: `checkpoint`
   (report with a checkpoint, as `train_classifier` does), `report` (metrics only), `none` (no per-epoch
   report; one report at the end).
3. `ray/end-to-end`: the real `train_classifier` run at E1 and E2 epochs (`--end-to-end`);
   (wall(E2) - wall(E1)) / ((E2 - E1) x steps per epoch) is its steady cost per step with everything in
   it (Ray start-up and the final save cancel out).

`--health-check-intervals 2,0.1` runs every Ray run once per RAY_TRAIN_HEALTH_CHECK_INTERVAL_S value
(Train's default: 2 s), back to back between the same plain runs. The controller collects a worker's
reports only that often, and a worker's queue holds one report, so `ray.train.report` blocks a loop that
reports more often until the controller's next poll.

Ratios are per step, against the paired plain loop's `train_epoch` per step (the same steps on the same
compute) and against its whole epoch (train, accuracy, save).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

try:
    import ccc_ray  # noqa: F401
except ImportError:  # run from a checkout without an install
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

AUGMENT_MAX_SHIFT = 1  # as train_classifier


def make_job(epochs: int, output_dir: str, run_id: str = "overhead"):
    from ccc_ray.config import load_config
    from ccc_ray.job_config import JobConfig

    return load_config(JobConfig, None, {"classifier.epochs": str(epochs), "run.output_dir": output_dir,
                                         "run.run_id": run_id, "run.num_workers": "1", "run.use_gpu": "false"})


def training_setup(job, world: int = 1):
    """Model, optimizer, loader and data exactly as train_classifier's loop builds them (seeded)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from ccc_ray.classifiers.build import build_classifier
    from ccc_ray.data.sources import load_dataset

    cfg = job.classifier
    dataset = load_dataset(job.data)
    torch.manual_seed(cfg.seed)
    model = build_classifier(cfg, dataset.image_shape, dataset.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    loader = DataLoader(TensorDataset(dataset.train_images, dataset.train_labels),
                        batch_size=max(1, cfg.batch_size // world), shuffle=True,
                        generator=torch.Generator().manual_seed(cfg.seed))
    return model, optimizer, loader, dataset


def timed_epochs(model, optimizer, loader, dataset, job, epochs: int, report=None) -> list[dict]:
    """Per epoch: seconds in train_epoch, in the accuracy, and in `report(epoch, loss, accuracy)` (or a local save)."""
    import torch

    from ccc_ray.classifiers.training import accuracy, train_epoch

    times = []
    for epoch in range(epochs):
        augment = torch.Generator().manual_seed(job.classifier.seed * 1_000_003 + epoch)
        started = time.perf_counter()
        loss = train_epoch(model, loader, optimizer, torch.device("cpu"), AUGMENT_MAX_SHIFT, augment)
        trained = time.perf_counter()
        test_accuracy = accuracy(model, dataset.test_images, dataset.test_labels)
        scored = time.perf_counter()
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1}
        if report is None:
            with tempfile.TemporaryDirectory() as folder:
                torch.save(state, Path(folder) / "state.pt")
        else:
            report(epoch, loss, test_accuracy, state)
        times.append({"train": trained - started, "accuracy": scored - trained, "report": time.perf_counter() - scored,
                      "steps": len(loader)})
    return times


def plain_run(epochs: int, threads: int | None) -> dict:
    import torch

    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads)
    try:
        with tempfile.TemporaryDirectory() as folder:
            job = make_job(epochs, folder)
            model, optimizer, loader, dataset = training_setup(job)
            times = timed_epochs(model, optimizer, loader, dataset, job, epochs)
        return {"threads": torch.get_num_threads(), "epochs": times}
    finally:
        torch.set_num_threads(default_threads)


def ray_loop(config: dict) -> None:
    """train_classifier's loop with the times taken inside it; `variant` picks the per-epoch report."""
    import ray.train
    import ray.train.torch
    import torch

    from ccc_ray.orchestration.checkpoints import checkpoint_to_report

    job, variant = config["job"], config["variant"]
    model, optimizer, loader, dataset = training_setup(job, ray.train.get_context().get_world_size())
    model = ray.train.torch.prepare_model(model)
    loader = ray.train.torch.prepare_data_loader(loader, move_to_device=False)

    def report(epoch, loss, test_accuracy, state):
        metrics = {"epoch": epoch + 1, "train_loss": loss, "test_accuracy": test_accuracy}
        if variant == "checkpoint":
            with checkpoint_to_report(state) as checkpoint:
                ray.train.report(metrics, checkpoint=checkpoint)
        elif variant == "report":
            ray.train.report(metrics)

    times = timed_epochs(model, optimizer, loader, dataset, job, job.classifier.epochs, report)
    # A file, not the Result's metrics: Train V2 gives back the metrics of the latest checkpoint only.
    Path(config["times_file"]).write_text(json.dumps({"threads": torch.get_num_threads(), "epochs": times,
                                                      "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}))


def ray_run(epochs: int, variant: str, storage: str) -> dict:
    import ray.train
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    job = make_job(epochs, storage)
    times_file = Path(storage) / f"times-{time.time_ns()}.json"  # one machine: the worker writes, we read
    trainer = TorchTrainer(ray_loop, train_loop_config={"job": job, "variant": variant, "times_file": str(times_file)},
                           scaling_config=ScalingConfig(num_workers=1, use_gpu=False, resources_per_worker={"CPU": 1}),
                           run_config=RunConfig(name=f"overhead-{variant}-{time.time_ns()}", storage_path=storage))
    for attempt in (1, 2):  # a shared machine: a worker can miss its health check under load; retry once
        try:
            trainer.fit()
            break
        except ray.train.TrainingFailedError as error:
            if attempt == 2:
                raise
            print(f"ray/{variant}: run failed ({str(error).splitlines()[0]}); retrying once", file=sys.stderr)
    return json.loads(times_file.read_text())


def end_to_end_seconds(epochs: int, folder: str) -> float:
    from ccc_ray.orchestration.train_classifier import train_classifier

    job = make_job(epochs, folder, run_id=f"e2e-{epochs}-{time.time_ns()}")
    started = time.perf_counter()
    train_classifier(job)
    return time.perf_counter() - started


def per_step(runs: list[list[dict]], skip: int, parts: tuple[str, ...]) -> float:
    """Median over steady epochs of (seconds in `parts`) / steps."""
    return statistics.median(sum(epoch[p] for p in parts) / epoch["steps"] for run in runs for epoch in run[skip:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15, help="epochs per timed run (default 15)")
    parser.add_argument("--skip", type=int, default=3, help="first epochs of each run left out (default 3)")
    parser.add_argument("--end-to-end", default="5,20", help="E1,E2 epochs of the real train_classifier ('' skips)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each kind (default 2)")
    parser.add_argument("--variants", default="checkpoint,report,none", help="Ray per-epoch report variants")
    parser.add_argument("--default-threads", action="store_true",
                        help="also time the plain loop at torch's default thread count (once, for reference)")
    parser.add_argument("--health-check-intervals", default="",
                        help="comma-separated RAY_TRAIN_HEALTH_CHECK_INTERVAL_S values; each Ray run is repeated "
                             "with every value, back to back between the same plain runs ('' = Train's own, 2 s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args()
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    intervals = [part for part in args.health_check_intervals.split(",") if part] or [None]

    def use_interval(interval: str | None) -> None:
        """Train gives its controller the driver's value at each fit(), so it can change between runs."""
        if interval is None:
            os.environ.pop("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", None)
        else:
            os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = interval
    import ray
    import torch

    # Every Ray run is paired with plain runs right before and after it (1 thread, as the 1-CPU worker), and
    # its ratio taken against their mean: on a shared machine the load changes between minutes.
    def plain_steps() -> dict:
        epochs = plain_run(args.epochs, 1)["epochs"]
        return {"train": per_step([epochs], args.skip, ("train",)),
                "epoch": per_step([epochs], args.skip, ("train", "accuracy", "report"))}

    result = {"torch_default_threads": torch.get_num_threads(), "ray": {}, "end_to_end": None}
    if args.default_threads:
        result["plain_default_threads_train_per_step_ms"] = 1e3 * per_step(
            [plain_run(args.epochs, None)["epochs"]], args.skip, ("train",))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level="warning")
    try:
        with tempfile.TemporaryDirectory(prefix="ccc-overhead-") as storage:
            pairs_of = {}
            for variant in args.variants.split(","):
                for _ in range(args.repeats):
                    before = plain_steps()
                    runs = {}
                    for interval in intervals:
                        use_interval(interval)
                        runs[interval] = ray_run(args.epochs, variant, storage)
                    use_interval(None)
                    after = plain_steps()
                    plain = {key: (before[key] + after[key]) / 2 for key in before}
                    for interval, run in runs.items():
                        ray_train = per_step([run["epochs"]], args.skip, ("train",))
                        ray_epoch = per_step([run["epochs"]], args.skip, ("train", "accuracy", "report"))
                        report = statistics.median(e["report"] for e in run["epochs"][args.skip:])
                        pairs_of.setdefault(f"{variant}@{interval or 'default'}", []).append({
                            "threads": run["threads"], "plain_train_ms": 1e3 * plain["train"],
                            "plain_epoch_ms": 1e3 * plain["epoch"], "ray_train_ms": 1e3 * ray_train,
                            "ray_epoch_ms": 1e3 * ray_epoch, "report_ms": 1e3 * report,
                            "train_ratio": ray_train / plain["train"],
                            "epoch_vs_plain_train": ray_epoch / plain["train"],
                            "epoch_vs_plain_epoch": ray_epoch / plain["epoch"]})
            for name, pairs in pairs_of.items():
                result["ray"][name] = {"pairs": pairs, **{
                    key: statistics.median(pair[key] for pair in pairs)
                    for key in ("train_ratio", "epoch_vs_plain_train", "epoch_vs_plain_epoch", "report_ms")}}
            if args.end_to_end:
                low, high = (int(part) for part in args.end_to_end.split(","))
                steps = len(training_setup(make_job(1, storage))[2])
                pairs = []
                for _ in range(args.repeats):
                    before = plain_steps()
                    walls = {epochs: end_to_end_seconds(epochs, storage) for epochs in (low, high)}
                    after = plain_steps()
                    per = (walls[high] - walls[low]) / ((high - low) * steps)
                    pairs.append({"wall_s": walls, "per_step_ms": 1e3 * per,
                                  "plain_train_ms": 1e3 * (before["train"] + after["train"]) / 2,
                                  "plain_epoch_ms": 1e3 * (before["epoch"] + after["epoch"]) / 2,
                                  "vs_plain_train": per / ((before["train"] + after["train"]) / 2),
                                  "vs_plain_epoch": per / ((before["epoch"] + after["epoch"]) / 2)})
                result["end_to_end"] = {"epochs": [low, high], "steps_per_epoch": steps, "pairs": pairs,
                                        "vs_plain_train": statistics.median(p["vs_plain_train"] for p in pairs),
                                        "vs_plain_epoch": statistics.median(p["vs_plain_epoch"] for p in pairs)}
    finally:
        ray.shutdown()
    if args.json:
        print(json.dumps(result))
        return
    print(json.dumps(result, indent=1, default=str))
    for variant, figures in result["ray"].items():
        print(f"ray/{variant}: train steps {figures['train_ratio']:.2f}x plain; whole epoch "
              f"{figures['epoch_vs_plain_train']:.2f}x plain train steps, {figures['epoch_vs_plain_epoch']:.2f}x plain "
              f"whole epoch; report {figures['report_ms']:.0f} ms")
    if result["end_to_end"]:
        e2e = result["end_to_end"]
        print(f"ray/end-to-end train_classifier: {e2e['vs_plain_train']:.2f}x plain train steps, "
              f"{e2e['vs_plain_epoch']:.2f}x plain whole epoch")


if __name__ == "__main__":
    main()
