"""Nguyen et al.'s retraining experiment on a `ccc-ray harden --rounds R` run folder (a script, not a test).

Nguyen, Yosinski & Clune (CVPR 2015), section 3.3: after each round of retraining with the fooling images
as an extra class, evolution is run again, and the question is how much harder the new model is to fool.
Here: MAP-Elites with the direct and the CPPN encoding attacks the baseline classifier (round 0,
`<run>/classifier.safetensors`) and each round's hardened classifier
(`<run>/rounds/<run_id>.r<r>/classifier-hardened.safetensors`), and prints, per class, the generations
needed until the champion's confidence reaches the confidence bar on its stored uint8 image, or '-'
when not within --max-generations. A hardened reject-mode model has K + 1 outputs; the confidence of class k
is its softmax over all of them, so putting mass on "reject" defends.

The searches are those of `ccc-ray attack` (`build_search` + `search_run` of `ccc_ray.counterfeits.search`),
one after another in this process. Run from the repository root:

    .venv/bin/python benchmarks/nguyen_retraining.py --run-dir /tmp/r3/default --seeds 3
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
from pathlib import Path

import torch

from ccc_ray.classifiers.weights import load_classifier
from ccc_ray.counterfeits.search import build_search, plan_runs, search_run
from ccc_ray.methods import method_class


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--run-dir", required=True, help="a run folder after `ccc-ray harden --rounds R`")
    parser.add_argument("--encodings", default="direct_encoding,cppn", help="comma-separated MAP-Elites encodings")
    parser.add_argument("--population", type=int, default=200, help="offspring per generation (paper: 200)")
    parser.add_argument("--max-generations", type=int, default=1000, help="generations per run at most")
    parser.add_argument("--confidence-bar", type=float, default=0.99,
                        help="confidence on the stored image that counts as fooled (as --keep.confidence_bar)")
    parser.add_argument("--seeds", type=int, default=1, help="independent runs per model and encoding (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return parser.parse_args()


def round_models(run_dir: Path) -> list[tuple[int, Path]]:
    """(round, classifier file): the baseline as round 0, then every hardened round found, in order."""
    baseline = run_dir / "classifier.safetensors"
    if not baseline.is_file():
        raise SystemExit(f"{baseline} does not exist: is {run_dir} a ccc-ray run folder?")
    rounds = []
    for folder in (run_dir / "rounds").glob("*.r*"):
        match = re.fullmatch(r".*\.r(\d+)", folder.name)
        if match and (folder / "classifier-hardened.safetensors").is_file():
            rounds.append((int(match.group(1)), folder / "classifier-hardened.safetensors"))
    return [(0, baseline), *sorted(rounds)]


def cell(generations: list[int], limit: int) -> str:
    """Median generations over the seeds; '-' counts as more than the budget."""
    reached = [g if g >= 0 else limit + 1 for g in generations]
    middle = statistics.median_low(reached)
    return "-" if middle > limit else str(middle)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    run_dir = Path(args.run_dir)
    models = round_models(run_dir)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); run {run_dir}; population "
          f"{args.population}, at most {args.max_generations} generations, confidence bar {args.confidence_bar} on the "
          f"stored uint8 image; median over {args.seeds} seed(s); '-' = not within {args.max_generations}")
    rows = []
    for encoding in args.encodings.split(","):
        method = method_class(encoding, "--encodings", kinds=("search",))
        config = method.config_class(population_size=args.population, max_generations=args.max_generations)
        for round_index, path in models:
            model, info = load_classifier(path)
            model.requires_grad_(False)
            k = info.num_classes
            runs = plan_runs(list(range(k)), args.seeds, 1, seed=round_index + 1)
            start = time.perf_counter()
            search = build_search(method, config, model, info.num_outputs, info.image_shape, args.confidence_bar)
            results = [search_run(search, run) for run in runs]
            seconds = time.perf_counter() - start
            generations = [[int(r.generations[c]) for r in results] for c in range(k)]
            fooled = sum(g >= 0 for per_class in generations for g in per_class)
            rows.append((encoding, round_index, "reject" if info.reject_class else "plain", generations,
                         fooled, k * len(results), sum(r.total_evaluations for r in results), seconds))
            print(f"  {encoding} round {round_index}: {fooled}/{k * len(results)} fooled, {seconds:.1f} s", flush=True)

    k = len(rows[0][3])
    print("\ngenerations to the confidence bar, per class")
    print(f"{'encoding':<16}{'round':>6}{'model':>8}" + "".join(f"{c:>6}" for c in range(k))
          + f"{'fooled':>9}{'evaluations':>13}{'seconds':>9}")
    for encoding, round_index, kind, generations, fooled, total, evaluations, seconds in rows:
        print(f"{encoding:<16}{round_index:>6}{kind:>8}"
              + "".join(f"{cell(g, args.max_generations):>6}" for g in generations)
              + f"{fooled:>5}/{total:<3}{evaluations:>13}{seconds:>9.1f}")


if __name__ == "__main__":
    main()
