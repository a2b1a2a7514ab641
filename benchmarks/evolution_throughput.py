"""Throughput of the fooling-image searches on a digits classifier (a script, not a test).

1. Classifier evaluations per second of MAP-Elites as implemented (the offspring population mutated,
   rendered and scored as one batch) against a naive loop that mutates, renders and scores one image at
   a time, for the same classifier and the same number of evaluations; direct encoding and CPPN.
2. Confident counterfeits (confidence >= threshold) per second of wall time for direct-encoding and CPPN
   MAP-Elites run until all classes are fooled, and for gradient ascent on a batch of targets; with the
   per-class generations and classifier evaluations the evolution needed.

Every figure is the median over --repeats runs. Run from the repository root:

    .venv/bin/python benchmarks/evolution_throughput.py --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ccc_ray.classifiers.small_cnn import SmallCNN
from ccc_ray.classifiers.training import accuracy, train_epoch
from ccc_ray.data.sources import DataConfig, load_dataset
from ccc_ray.methods.cppn import Cppn, CppnConfig
from ccc_ray.methods.direct_encoding import DirectEncoding, DirectEncodingConfig
from ccc_ray.methods.gradient_ascent import GradientAscent, GradientAscentConfig
from ccc_ray.methods.map_elites import MapElites, MapElitesConfig, class_probabilities


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--classifier", help="a ccc-ray classifier file (.safetensors) for digits; "
                        "default: train a SmallCNN on digits in-process")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs when no --classifier is given")
    parser.add_argument("--population", type=int, default=200, help="MAP-Elites offspring per generation")
    parser.add_argument("--generations", type=int, default=20,
                        help="generations timed in the batched-vs-naive comparison")
    parser.add_argument("--max-generations", type=int, default=1000, help="budget of the runs to the threshold")
    parser.add_argument("--ascent-targets", type=int, default=100, help="images per gradient-ascent batch")
    parser.add_argument("--threshold", type=float, default=0.99, help="confidence that counts as fooled")
    parser.add_argument("--repeats", type=int, default=5, help="repeats per measurement (the median is printed)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu", help="torch device for the search and the classifier")
    return parser.parse_args()


def digits_classifier(args: argparse.Namespace, device: torch.device):
    data = load_dataset(DataConfig())
    if args.classifier:
        from ccc_ray.classifiers.weights import load_classifier

        model, _ = load_classifier(args.classifier, data.image_shape, data.num_classes)
    else:
        torch.manual_seed(1)
        model = SmallCNN(data.image_shape, data.num_classes)
        optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
        generator = torch.Generator().manual_seed(1)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(data.train_images, data.train_labels),
                                             batch_size=64, shuffle=True, generator=generator)
        for _ in range(args.epochs):
            train_epoch(model, loader, optimizer, torch.device("cpu"), 1, generator)
    model = model.to(device).eval().requires_grad_(False)
    return model, data, accuracy(model, data.test_images, data.test_labels, device)


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


def timed(function, *args) -> float:
    """Wall seconds of `function(*args)`."""
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


def median(values) -> float:
    return statistics.median(values)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model, data, test_accuracy = digits_classifier(args, device)
    shape, classes = data.image_shape, data.num_classes
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} thread(s); "
          f"digits SmallCNN, test accuracy {test_accuracy:.3f}; median of {args.repeats} repeats")

    encodings = {"direct": DirectEncoding(DirectEncodingConfig(), shape, device),
                 "cppn": Cppn(CppnConfig(), shape, device)}
    evaluations = args.population * (args.generations + 1)
    print(f"\n1. classifier evaluations per second, {evaluations} evaluations "
          f"(population {args.population}, {args.generations} generations)")
    print(f"{'encoding':<10}{'batched/s':>12}{'naive/s':>12}{'ratio':>8}")
    timing = MapElitesConfig(population_size=args.population, max_generations=args.generations,
                             stop_at_threshold=False, threshold=args.threshold)
    for name, encoding in encodings.items():
        search = MapElites(timing, encoding)
        search.run(model, classes, seed=0)  # warm-up
        batched, naive = [], []
        for repeat in range(args.repeats):
            batched.append(evaluations / timed(search.run, model, classes, repeat))
            naive.append(evaluations / timed(naive_map_elites, encoding, model, classes, evaluations,
                                             args.population, repeat))
        print(f"{name:<10}{median(batched):>12.0f}{median(naive):>12.0f}{median(batched) / median(naive):>8.1f}")

    print(f"\n2. confident counterfeits (confidence >= {args.threshold}) per second, runs to the threshold")
    print(f"{'method':<17}{'counterfeits/s':>15}{'fooled':>9}{'seconds':>9}")
    budget = MapElitesConfig(population_size=args.population, max_generations=args.max_generations,
                             threshold=args.threshold)
    needs = {}
    for name, encoding in encodings.items():
        rates, fooled, seconds, results = [], [], [], []
        for repeat in range(args.repeats):
            start = time.perf_counter()
            result = MapElites(budget, encoding).run(model, classes, seed=repeat)
            seconds.append(time.perf_counter() - start)
            fooled.append(int(result.fooled.sum()))
            rates.append(fooled[-1] / seconds[-1])
            results.append(result)
        needs[name] = results
        print(f"{'map_elites_' + name:<17}{median(rates):>15.1f}{median(fooled):>6.0f}/{classes}"
              f"{median(seconds):>9.2f}")
    targets = torch.arange(args.ascent_targets, device=device) % classes
    ascent = GradientAscent(GradientAscentConfig(threshold=args.threshold), model, shape, classes, device)
    rates, fooled, seconds = [], [], []
    for repeat in range(args.repeats):
        start = time.perf_counter()
        result = ascent.run(targets, seed=repeat)
        seconds.append(time.perf_counter() - start)
        fooled.append(int(result.fooled.sum()))
        rates.append(fooled[-1] / seconds[-1])
    print(f"{'gradient_ascent':<17}{median(rates):>15.1f}{median(fooled):>6.0f}/{len(targets)}"
          f"{median(seconds):>9.2f}")

    print("\n3. per class, median over the repeats: generations (evaluations) until the champion first "
          f"reached {args.threshold}; -1 = not within {args.max_generations} generations")
    print(f"{'class':<10}" + "".join(f"{k:>12}" for k in range(classes)))
    for name, results in needs.items():
        generations = torch.stack([r.generations_to_threshold for r in results]).median(0).values
        spent = torch.stack([r.evaluations_to_threshold for r in results]).median(0).values
        print(f"{name:<10}" + "".join(f"{int(g):>5} ({int(e):>5})" for g, e in zip(generations, spent)))


if __name__ == "__main__":
    main()
