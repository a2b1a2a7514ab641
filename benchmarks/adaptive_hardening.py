"""Hardening modes side by side, in one process (no Ray): does the hardened model hold against a fresh attack?

Trains the baseline digits classifier and its inversion counterfeits once (cached in --work), then for
each mode fine-tunes a copy of the baseline the way `harden_classifier.py` does and measures:
clean accuracy; AUROC of the hardened model's score on held-out counterfeits of every family (inversion
rows held out by the split, plus gradient-ascent and MAP-Elites direct-encoding counterfeits made against
the baseline, never trained on), photo patches and letters; and the success of fresh attacks against
the hardened model: a new inversion generator (the method's full 1,000 steps), gradient ascent (300
steps) and MAP-Elites direct encoding (the method's budget). A fresh-attack sample succeeds when it is
confident on its target at the bar on the stored image, accepted by the 95%-TPR OOD threshold, and far
from the data (the project's far rule, `ccc_ray/counterfeits/far.py`).

    PYTHONPATH=. python benchmarks/adaptive_hardening.py --modes reject,oe,adaptive --json out.json
    PYTHONPATH=. python benchmarks/adaptive_hardening.py --modes adaptive --set pgd_epsilon=0.2 --set reject_weight=2.0

Each mode costs minutes of CPU (the fresh MAP-Elites search dominates); separate processes per mode run
side by side and share the cached baseline. Figures: docs/BENCHMARKS.md, "Issue 12".
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from pathlib import Path

import torch

from ccc_ray.classifiers.build import ClassifierConfig, build_classifier
from ccc_ray.classifiers.training import train_epoch
from ccc_ray.counterfeits.far import FarFromData, FarRule, fit_far_rule
from ccc_ray.counterfeits.keep import score_as_stored
from ccc_ray.data.real_ood import real_ood_images
from ccc_ray.data.sources import DataConfig, load_dataset
from ccc_ray.evaluate import attack_success_rate, evaluate_classifier
from ccc_ray.job import HardenSettings
from ccc_ray.methods.base import MethodContext
from ccc_ray.methods.direct_encoding import DirectEncodingConfig, DirectEncodingEvolution
from ccc_ray.methods.gradient_ascent import GradientAscent, GradientAscentConfig
from ccc_ray.methods.inversion import InversionConfig, NetworkInversion
from ccc_ray.ood.scores import ood_score
from ccc_ray.orchestration.harden_classifier import fine_tune_in_process

BAR = 0.99

# name -> harden settings overrides (every other setting at its default)
MODES: dict[str, dict] = {
    "reject": {"mode": "reject"},
    "oe": {"mode": "oe"},
    "adaptive": {"mode": "adaptive"},
    "adaptive-no-generator": {"mode": "adaptive", "attacker_steps": 0},
    "adaptive-no-pgd": {"mode": "adaptive", "pgd_steps": 0},
    "adaptive-no-mining": {"mode": "adaptive", "mine_pool": 1},
}


def train_inversion(classifier, dataset, seed: int, steps: int = 1000) -> NetworkInversion:
    context = MethodContext(dataset.image_shape, dataset.num_classes, classifier, "cpu", BAR)
    method = NetworkInversion(InversionConfig(seed=seed, steps=steps), context)
    rng = torch.Generator().manual_seed(seed)
    classifier.eval().requires_grad_(False)
    for _ in range(steps):
        method.training_step(None, rng, method.config.batch_size)
    classifier.requires_grad_(True)
    return method


def baseline_and_counterfeits(work: Path, dataset) -> dict:
    """The baseline (pipeline defaults) and its stored-rule counterfeits of three families, cached."""
    cache = work / "baseline.pt"
    if cache.is_file():
        return torch.load(cache)
    torch.manual_seed(0)
    config = ClassifierConfig()
    model = build_classifier(config, dataset.image_shape, dataset.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(dataset.train_images, dataset.train_labels),
                                         batch_size=config.batch_size, shuffle=True,
                                         generator=torch.Generator().manual_seed(0))
    for epoch in range(config.epochs):
        train_epoch(model, loader, optimizer, "cpu", 1, torch.Generator().manual_seed(epoch))
    model.eval()
    k = dataset.num_classes
    inversion = train_inversion(model, dataset, seed=0)
    targets = torch.arange(k).repeat_interleave(100)
    scored = score_as_stored(inversion.sample(targets, 1), targets, model, BAR)
    images = scored.images[scored.kept]
    held = torch.rand(len(images), generator=torch.Generator().manual_seed(0)) < 0.3
    context = MethodContext(dataset.image_shape, k, model, "cpu", BAR)
    ascent = GradientAscent(GradientAscentConfig(), context).search(torch.arange(k).repeat(10), 3).images
    direct = DirectEncodingEvolution(DirectEncodingConfig(), context).search(torch.arange(k).repeat(2), 4).images
    state = {"model": model.state_dict(), "train": images[~held], "held_out": images[held],
             "ascent": score_as_stored(ascent, torch.arange(k).repeat(10), model, BAR).images,
             "direct": score_as_stored(direct, torch.arange(k).repeat(2), model, BAR).images}
    torch.save(state, cache)
    return state


def fresh_attacks(model, reject: bool, evaluation, dataset, far: FarFromData, seed: int) -> dict:
    """Success rate of each fresh attack: confident, accepted and far."""
    k = dataset.num_classes
    # searches optimise over every output (the reject one too), targeting only the real classes
    context = MethodContext(dataset.image_shape, k + reject, model, "cpu", BAR)
    attacks = {}
    started = time.time()
    inversion = train_inversion(model, dataset, seed=seed)
    targets = torch.arange(k).repeat_interleave(50)
    attacks["inversion"] = (inversion.sample(targets, seed + 1), targets)
    targets = torch.arange(k).repeat(10)
    attacks["gradient_ascent"] = (GradientAscent(GradientAscentConfig(), context).search(targets, seed).images,
                                  targets)
    targets = torch.arange(k).repeat(2)
    attacks["direct_encoding"] = (DirectEncodingEvolution(DirectEncodingConfig(), context).search(targets, seed).images,
                                  targets)
    out = {}
    for name, (images, targets) in attacks.items():
        stored = score_as_stored(images, targets, model, BAR)
        rates = attack_success_rate(model, reject, images, targets, evaluation.primary_score,
                                    evaluation.ood_threshold, BAR)
        far_mask = far.is_far(stored.images)
        accepted = ood_score(evaluation.primary_score, stored.logits, reject) >= evaluation.ood_threshold
        success = stored.kept & accepted & far_mask
        out[name] = {"success": float(success.double().mean()), "confident_accepted": rates["success_rate"],
                     "far_share": float(far_mask.double().mean()), "samples": len(targets)}
    out["seconds"] = time.time() - started
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--work", default="/tmp/adaptive-bench")
    parser.add_argument("--json", default=None)
    parser.add_argument("--set", action="append", default=[], help="extra harden setting for every mode, key=value")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(DataConfig())
    started = time.time()
    base = baseline_and_counterfeits(work, dataset)
    print(f"baseline ready in {time.time() - started:.0f} s: {len(base['train'])} train / "
          f"{len(base['held_out'])} held-out inversion counterfeits, {len(base['ascent'])} ascent, "
          f"{len(base['direct'])} direct", flush=True)
    baseline = build_classifier(ClassifierConfig(), dataset.image_shape, dataset.num_classes)
    baseline.load_state_dict(base["model"])
    ood_sets = {"held_out_inversion": base["held_out"], "held_out_ascent": base["ascent"],
                "held_out_direct": base["direct"], **real_ood_images(dataset.image_shape, 500, 0)}
    # held-out real images for the far rule: the test split (never trained on)
    far = fit_far_rule(FarRule(), dataset)
    extra = {key: float(value) if "." in value else int(value) for key, value in
             (item.split("=", 1) for item in args.set)}
    rows = []
    for name in args.modes.split(","):
        settings = dataclasses.replace(HardenSettings(), **{**MODES.get(name, {"mode": name}), **extra})
        started = time.time()
        model = fine_tune_in_process(copy.deepcopy(baseline), settings, dataset, base["train"], far)
        tune_seconds = time.time() - started
        print(f"{name}: fine-tuned in {tune_seconds:.0f} s", flush=True)
        reject = settings.mode != "oe"
        evaluation = evaluate_classifier(model, reject, dataset.test_images, dataset.test_labels, ood_sets,
                                         settings.score)
        aurocs = {set_name: metrics[evaluation.primary_score]["auroc"]
                  for set_name, metrics in evaluation.metrics.items()}
        attacks = fresh_attacks(model, reject, evaluation, dataset, far, seed=11)
        row = {"mode": name, "settings": extra, "clean_accuracy": evaluation.clean_accuracy, "auroc": aurocs,
               "attacks": attacks, "fine_tune_seconds": tune_seconds}
        rows.append(row)
        print(json.dumps(row), flush=True)
    baseline_eval = evaluate_classifier(baseline, False, dataset.test_images, dataset.test_labels, ood_sets,
                                        "max_softmax")
    print(json.dumps({"mode": "baseline", "clean_accuracy": baseline_eval.clean_accuracy,
                      "auroc": {s: m["max_softmax"]["auroc"] for s, m in baseline_eval.metrics.items()},
                      "far_distance": far.radius}), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
