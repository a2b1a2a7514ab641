"""Throughput of the fooling-image searches on a digits classifier, side by side (a script, not a test).

0. The torch classifier's forward per image with its weights in the default layout and in channels-last
   (what `ccc-ray attack` uses), side by side.
1. Classifier evaluations per second of MAP-Elites as implemented (the offspring population mutated,
   rendered and scored as one batch) against a naive loop that mutates, renders and scores one image at
   a time, for the same classifier and the same number of evaluations; direct encoding and CPPN, for
   every population in --populations and thread count in --thread-counts, with the torch classifier and
   (with --ratio-backends torch,onnx) its ONNX export in onnxruntime. The ratio's baseline is the naive
   loop at the best of --naive-thread-counts.
2. Confident counterfeits (confidence >= the confidence bar on the stored uint8 image) per second of wall
   time: the trained inversion generator of the foundation issue (with --run-dir), direct-encoding and
   CPPN MAP-Elites run until all classes are fooled, and gradient ascent on a batch of targets. The
   searches are those of `ccc-ray attack` (`build_search` + `search_run` of `ccc_ray.counterfeits.search`),
   in this process; the generator's samples are judged by the keep rule (`score_as_stored`).
3. Per class, the generations and classifier evaluations the evolution needed to reach the confidence bar.
4. The black-box path: the same runs against the classifier's ONNX export (onnxruntime); the largest
   difference of the champions' confidences from the torch runs.

Figures are medians over --repeats runs; --sections picks which to run (2 means sections 2-4, which
share their runs). Run from the repository root:

    .venv/bin/python benchmarks/evolution_throughput.py --run-dir /tmp/bench-runs/default --repeats 5
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ccc_ray.classifiers.inference import prepare_for_attack
from ccc_ray.classifiers.small_cnn import SmallCNN
from ccc_ray.classifiers.training import accuracy, train_epoch
from ccc_ray.counterfeits.keep import score_as_stored
from ccc_ray.counterfeits.search import AttackRun, build_search, search_run
from ccc_ray.data.sources import DataConfig, load_dataset
from ccc_ray.methods import METHODS
from ccc_ray.methods.cppn import Cppn, CppnConfig
from ccc_ray.methods.direct_encoding import DirectEncoding, DirectEncodingConfig
from ccc_ray.methods.gradient_ascent import GradientAscentConfig
from ccc_ray.methods.map_elites import MapElites, MapElitesConfig, class_probabilities

EVOLUTION = ("direct_encoding", "cppn")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--run-dir", help="a run folder with classifier.safetensors (digits) and, for the "
                        "generator's figure, generator-inversion.safetensors; default: train a SmallCNN here")
    parser.add_argument("--classifier", help="a ccc-ray classifier file for digits (instead of --run-dir)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs when no classifier is given")
    parser.add_argument("--populations", default="200,1000", help="MAP-Elites offspring per generation, "
                        "comma-separated: section 1 runs each")
    parser.add_argument("--thread-counts", default="1", help="torch / onnxruntime threads of section 1, "
                        "comma-separated")
    parser.add_argument("--naive-thread-counts", default="1", help="thread counts the naive loop of section 1 "
                        "runs at; its best is the ratios' baseline")
    parser.add_argument("--ratio-backends", default="torch", help="classifiers of section 1: torch, onnx or both")
    parser.add_argument("--evaluations", type=int, default=20000,
                        help="classifier evaluations timed per cell of section 1 (rounded to whole generations)")
    parser.add_argument("--population", type=int, default=200, help="offspring per generation in sections 2-4")
    parser.add_argument("--max-generations", type=int, default=1000, help="budget of the runs to the confidence bar")
    parser.add_argument("--ascent-targets", type=int, default=100, help="images per gradient-ascent batch")
    parser.add_argument("--generator-samples", type=int, default=1000, help="images the generator samples")
    parser.add_argument("--confidence-bar", type=float, default=0.99,
                        help="confidence on the stored image that counts as fooled (as --keep.confidence_bar)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per measurement (the median is printed)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads in sections 2-4")
    parser.add_argument("--sections", default="0,1,2", help="sections to run, comma-separated: 0 (layout), "
                        "1 (batched vs naive), 2 (sections 2-4: counterfeits/s, generations, ONNX)")
    return parser.parse_args()


def digits_classifier(args: argparse.Namespace):
    """(model, data, test accuracy, classifier file or None)."""
    from ccc_ray.classifiers.weights import load_classifier

    data = load_dataset(DataConfig())
    path = Path(args.run_dir) / "classifier.safetensors" if args.run_dir else args.classifier
    if path:
        model, _ = load_classifier(path, data.image_shape, data.num_classes)
    else:
        torch.manual_seed(1)
        model = SmallCNN(data.image_shape, data.num_classes)
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
        generator = torch.Generator().manual_seed(1)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.train_images, data.train_labels),
                                             batch_size=64, shuffle=True, generator=generator)
        for _ in range(args.epochs):
            train_epoch(model, loader, optimizer, torch.device("cpu"), 1, generator)
    model = model.eval().requires_grad_(False)
    return model, data, accuracy(model, data.test_images, data.test_labels, torch.device("cpu")), path


def export_for_onnx(model, data, folder: str) -> Path:
    from ccc_ray.export.onnx_export import export_onnx

    path = Path(folder) / "classifier.onnx"
    export_onnx(model, path, list(data.class_names), data.image_shape)
    return path


@torch.no_grad()
def naive_map_elites(encoding, classifier, num_classes: int, evaluations: int, population: int, seed: int) -> None:
    """MAP-Elites one image at a time: mutate, render and score each offspring on its own."""
    generator = torch.Generator(device=encoding.device).manual_seed(seed)
    genomes, confidences, done = None, torch.full((num_classes,), -1.0, device=encoding.device), 0
    while done < evaluations:
        if done < population:  # the initial population, one random individual at a time
            child = encoding.initial(1, generator)
        else:
            parent = int(torch.randint(num_classes, (1,), generator=generator, device=encoding.device))
            child = encoding.mutate(genomes[parent:parent + 1], done // population, generator)
        probabilities = class_probabilities(classifier, encoding.render(child))[0]
        if genomes is None:
            genomes = child[torch.zeros(num_classes, dtype=torch.int64, device=encoding.device)]
        beaten = torch.nonzero(probabilities > confidences).flatten()
        if len(beaten):
            genomes[beaten] = child[torch.zeros(len(beaten), dtype=torch.int64, device=encoding.device)]
            confidences[beaten] = probabilities[beaten]
        done += 1


class TimedClassifier:
    """The classifier, with the wall time spent inside its calls added up (to show where batched time goes)."""

    def __init__(self, classifier):
        self.classifier, self.seconds = classifier, 0.0
        self.image_shape = getattr(classifier, "image_shape", None)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        logits = self.classifier(images)
        self.seconds += time.perf_counter() - start
        return logits


def timed(function, *args) -> float:
    """Wall seconds of `function(*args)`."""
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def median(values) -> float:
    return statistics.median(values)


def encoding_for(name: str, shape):
    return DirectEncoding(DirectEncodingConfig(), shape) if name == "direct_encoding" else Cppn(CppnConfig(), shape)


def section_layout(args, model, shape) -> None:
    """The torch forward per image with the weights in the default (NCHW) layout and in channels-last, as
    `prepare_for_attack` sets them, side by side at each thread count."""
    nhwc = prepare_for_attack(copy.deepcopy(model))
    print("\n0. torch classifier forward, microseconds per image: default NCHW weights vs channels-last")
    batches = (1, 200, 1000)
    print(f"{'threads':<8}" + "".join(f"{f'NCHW {n}':>11}{f'NHWC {n}':>11}{'speed-up':>9}" for n in batches))
    for threads in (int(t) for t in args.thread_counts.split(",")):
        torch.set_num_threads(threads)
        line = f"{threads:<8}"
        for batch in batches:
            images = torch.rand(batch, *shape)
            calls = max(3, 10000 // batch)
            costs = {}
            for name, candidate in (("nchw", model), ("nhwc", nhwc)):
                with torch.no_grad():
                    candidate(images)  # warm-up
                    costs[name] = median([timed(lambda: [candidate(images) for _ in range(calls)])
                                          for _ in range(args.repeats)]) / (calls * batch) * 1e6
            line += f"{costs['nchw']:>11.1f}{costs['nhwc']:>11.1f}{costs['nchw'] / costs['nhwc']:>9.2f}"
        print(line, flush=True)
    torch.set_num_threads(args.threads)


def section_ratio(args, model, onnx_path: Path, data) -> None:
    """Batched at each thread count against the naive loop at its best thread count (from --naive-thread-counts),
    same evaluations, same run: intra-op threads mostly add synchronisation to one-image operations, so
    the naive loop is usually fastest at one thread, but that is measured rather than assumed."""
    from ccc_ray.export.onnx_runtime import OnnxClassifier

    shape, classes = data.image_shape, data.num_classes
    thread_counts = [int(t) for t in args.thread_counts.split(",")]
    naive_thread_counts = [int(t) for t in args.naive_thread_counts.split(",")]
    print("\n1. classifier evaluations per second: batched MAP-Elites vs a naive one-image-at-a-time loop "
          f"(about {args.evaluations} evaluations each; ratio = batched / the naive loop's best)")
    print(f"{'backend':<8}{'population':>11}{'encoding':>17}"
          + "".join(f"{f'naive/s {t}t':>13}" for t in naive_thread_counts)
          + "".join(f"{f'batched/s {t}t':>15}{'ratio':>7}{'in clf':>8}" for t in thread_counts))

    def classifier_at(backend: str, threads: int):
        torch.set_num_threads(threads)
        return model if backend == "torch" else OnnxClassifier(onnx_path, num_threads=threads, spin_wait=False)

    for backend in args.ratio_backends.split(","):
        for population in map(int, args.populations.split(",")):
            generations = max(1, round(args.evaluations / population) - 1)
            evaluations = population * (generations + 1)
            timing = MapElitesConfig(population_size=population, max_generations=generations,
                                     stop_at_threshold=False, threshold=args.confidence_bar)
            for name in EVOLUTION:
                encoding = encoding_for(name, shape)
                search = MapElites(timing, encoding)
                naive_rates = []
                for threads in naive_thread_counts:
                    classifier = classifier_at(backend, threads)
                    naive_rates.append(median([
                        evaluations / timed(naive_map_elites, encoding, classifier, classes, evaluations, population,
                                            repeat) for repeat in range(args.repeats)]))
                naive = max(naive_rates)
                line = f"{backend:<8}{population:>11}{name:>17}" + "".join(f"{rate:>13.0f}" for rate in naive_rates)
                for threads in thread_counts:
                    classifier = classifier_at(backend, threads)
                    search.run(classifier, classes, seed=0)  # warm-up
                    batched, share = [], []
                    for repeat in range(args.repeats):
                        counted = TimedClassifier(classifier)  # time spent inside the classifier's calls
                        seconds = timed(search.run, counted, classes, repeat)
                        batched.append(evaluations / seconds)
                        share.append(counted.seconds / seconds)
                    line += f"{median(batched):>15.0f}{median(batched) / naive:>7.1f}{median(share):>8.0%}"
                print(line, flush=True)
    torch.set_num_threads(args.threads)


def generator_rate(args, model, data, classifier_file) -> tuple[float, int, int, float] | None:
    """(counterfeits/s, kept, sampled, seconds) of the run's inversion generator, median over repeats:
    sampling plus the keep rule (quantize to uint8, re-score, the bar), as `ccc-ray generate` does."""
    from ccc_ray.classifiers.weights import load_classifier
    from ccc_ray.methods.generator_file import load_generator

    file = Path(args.run_dir) / "generator-inversion.safetensors" if args.run_dir else None
    if file is None or not file.is_file():
        return None
    method, meta = load_generator(file)
    _, info = load_classifier(classifier_file)
    if meta["classifier_sha256"] != info.sha256:
        raise SystemExit(f"{file} was trained against another classifier than {classifier_file}")
    targets = torch.arange(args.generator_samples) % data.num_classes
    rates, kept, seconds = [], [], []
    for repeat in range(args.repeats):
        start = time.perf_counter()
        scored = score_as_stored(method.sample(targets, seed=repeat), targets, model, args.confidence_bar, "cpu")
        seconds.append(time.perf_counter() - start)
        kept.append(int(scored.kept.sum()))
        rates.append(kept[-1] / seconds[-1])
    return median(rates), int(median(kept)), len(targets), median(seconds)


def search_config(name: str, args: argparse.Namespace):
    """The method's config section with the benchmark's budget (evolution) or its defaults (gradient ascent)."""
    if name in EVOLUTION:
        return METHODS[name].config_class(population_size=args.population, max_generations=args.max_generations)
    return GradientAscentConfig()


def timed_search(name: str, config, classifier, classes: int, shape, bar: float, run: AttackRun):
    """(RunResult, seconds) of one `ccc-ray attack` run; building the method is timed too, as it is per run."""
    start = time.perf_counter()
    method = build_search(METHODS[name], config, classifier, classes, shape, bar)
    result = search_run(method, run)
    return result, time.perf_counter() - start


def section_counterfeits(args, model, onnx_path: Path, data, classifier_file) -> None:
    """Sections 2-4: counterfeits per second, generations per class, and the same runs against ONNX."""
    shape, classes = data.image_shape, data.num_classes
    print(f"\n2. confident counterfeits (confidence >= {args.confidence_bar} on the stored uint8 image) per second, "
          f"{args.threads} thread(s); evolution: population {args.population}, all {classes} classes per run, "
          f"at most {args.max_generations} generations")
    print(f"{'method':<17}{'counterfeits/s':>15}{'kept':>11}{'seconds':>9}")
    generated = generator_rate(args, model, data, classifier_file)
    if generated is None:
        print(f"{'inversion':<17}{'(no generator-inversion.safetensors: pass --run-dir)':>40}")
    else:
        rate, kept, sampled, seconds = generated
        print(f"{'inversion':<17}{rate:>15.1f}{kept:>6}/{sampled:<4}{seconds:>9.3f}")
    all_classes = tuple(range(classes))
    bar = args.confidence_bar
    results = {}
    for name in EVOLUTION:
        config = search_config(name, args)
        rates, kept, seconds, runs = [], [], [], []
        for repeat in range(args.repeats):
            result, took = timed_search(name, config, model, classes, shape, bar,
                                        AttackRun(repeat, 0, all_classes, repeat))
            seconds.append(took)
            kept.append(int((result.confidences >= bar).sum()))
            rates.append(kept[-1] / seconds[-1])
            runs.append(result)
        results[name] = (config, runs)
        print(f"{name:<17}{median(rates):>15.1f}{median(kept):>6.0f}/{classes:<4}{median(seconds):>9.3f}")
    config = search_config("gradient_ascent", args)
    targets = tuple(int(t) for t in torch.arange(args.ascent_targets) % classes)
    rates, kept, seconds = [], [], []
    for repeat in range(args.repeats):
        result, took = timed_search("gradient_ascent", config, model, classes, shape, bar,
                                    AttackRun(repeat, 0, targets, repeat))
        seconds.append(took)
        kept.append(int((result.confidences >= bar).sum()))
        rates.append(kept[-1] / seconds[-1])
    print(f"{'gradient_ascent':<17}{median(rates):>15.1f}{median(kept):>6.0f}/{len(targets):<4}{median(seconds):>9.3f}")

    print("\n3. per class, median over the repeats: generations (evaluations) until the champion first "
          f"reached {bar}; -1 = not within {args.max_generations} generations")
    print(f"{'class':<16}" + "".join(f"{k:>14}" for k in range(classes)))
    for name, (_, runs) in results.items():
        generations = torch.tensor([r.generations.tolist() for r in runs]).median(0).values
        spent = torch.tensor([r.evaluations.tolist() for r in runs]).median(0).values
        print(f"{name:<16}" + "".join(f"{int(g):>5} ({int(e):>6})" for g, e in zip(generations, spent)))

    from ccc_ray.export.onnx_runtime import OnnxClassifier

    onnx = OnnxClassifier(onnx_path, num_threads=args.threads, spin_wait=False)
    print("\n4. the same runs against the ONNX export (onnxruntime, black box): champions' confidences")
    print(f"{'method':<17}{'max |torch - onnx|':>19}{'same images':>13}{'same generations':>18}{'onnx seconds':>14}")
    for name, (config, runs) in results.items():
        gaps, same_images, same_generations, seconds = [], True, True, []
        for repeat, by_torch in enumerate(runs):
            by_onnx, took = timed_search(name, config, onnx, classes, shape, bar,
                                         AttackRun(repeat, 0, all_classes, repeat))
            seconds.append(took)
            gaps.append(float(abs(by_onnx.confidences - by_torch.confidences).max()))
            same_images &= bool((by_onnx.images == by_torch.images).all())
            same_generations &= bool((by_onnx.generations == by_torch.generations).all())
        print(f"{name:<17}{max(gaps):>19.2e}{same_images!s:>13}{same_generations!s:>18}"
              f"{median(seconds):>14.3f}")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    model, data, test_accuracy, classifier_file = digits_classifier(args)
    print(f"torch {torch.__version__}, CPU, {os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f} at the "
          f"start); digits SmallCNN {classifier_file or f'trained here for {args.epochs} epochs'}, "
          f"test accuracy {test_accuracy:.4f}; median of {args.repeats} repeats")
    sections = {int(part) for part in args.sections.split(",")}
    folder = tempfile.TemporaryDirectory(prefix="ccc-bench-")
    onnx_path = export_for_onnx(model, data, folder.name)
    if 0 in sections:
        section_layout(args, model, data.image_shape)
    model = prepare_for_attack(model)  # what `ccc-ray attack` does to a torch classifier
    if 1 in sections:
        section_ratio(args, model, onnx_path, data)
    if 2 in sections:
        section_counterfeits(args, model, onnx_path, data, classifier_file)
    folder.cleanup()


if __name__ == "__main__":
    main()
