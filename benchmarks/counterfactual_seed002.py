"""Seed 002 counterfactual GAN on 8x8 digits: the figures of docs/BENCHMARKS.md, "Issue 14" (a script, not a test).

In one process, no Ray, CPU:
1. two SmallCNNs on digits: the run's classifier (seed 0; the joint model starts from it widened to
   K + 1) and an independent judge (seed 1) that never sees the method;
2. the method trained with the orchestration loop in miniature (DataLoader over `training_data`,
   `training_step`); counterfactuals of 500 test images (50 per target class, sources of other classes):
   share the judge classifies as the target, mean L1 change, share of pixels changed by more than 0.1;
3. accuracy under PGD (10 steps, L-inf, random start) of the joint model and of the run's classifier on
   the test split, at several epsilons (a K + 1 prediction counts only when it is the true class), and of
   the joint model's class head alone (its K class logits; "fake" read as uncertainty, as the paper does);
4. OOD AUROC (in-distribution = digits test split positive) of the joint model's 1 - p(fake) beside max
   softmax, max logit and negative energy (joint model over its K class logits, and the plain classifier),
   on photo patches, letters, uniform noise and network-inversion counterfeits of the run's classifier;
4b. (`ood_all`) the same detectors on held-out counterfeits of EVERY registered method against the run's
   classifier, as `generate`/`attack` would store them (kept: confidence >= 0.99 on the stored image): the
   scorecard's families at fixed budgets (cached with `--cache`, they depend only on the run's classifier)
   and the trained method's own counterfactuals of test images; plus photo patches, letters and noise;
3b. (`threats`) PGD under three threat models: the class head attacked (K logits); all K + 1 outputs
   attacked with the true-class cross-entropy (a "fake" verdict counts as a success); and the wrong-class
   attack (`wrong_class_loss`: raise the wrong classes, not "fake"), each split into correct / rejected
   ("fake" on top) / wrong class;
5. saliency on the defect set (`ccc_ray.data.defects`): the method trained on clean/defective digits, the
   mask of defective -> clean as saliency, against gradient saliency of a plain classifier, random maps
   and the image itself (brightness); thresholds picked on defective training images, IoU on defective
   test images.

    PYTHONPATH=. .venv/bin/python benchmarks/counterfactual_seed002.py --label default \
        --results /tmp/cf002.jsonl [--set mask_weight=1.0 ...] [--parts digits,pgd,threats,ood,ood_all,defects]
        [--load-dir DIR: the state a --save-dir run kept, instead of training] [--cache FILE]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ccc_ray.classifiers.small_cnn import SmallCNN
from ccc_ray.classifiers.training import predict_logits, train_epoch
from ccc_ray.config import config_from_dict, config_to_dict, validate_config
from ccc_ray.data.defects import defect_data
from ccc_ray.data.real_ood import real_ood_images
from ccc_ray.data.sources import DataConfig, load_dataset
from ccc_ray.methods.base import MethodContext
from ccc_ray.methods.counterfactual import CounterfactualConfig, CounterfactualGAN, edit_map
from ccc_ray.ood import ood_metrics, ood_score
from ccc_ray.robustness import PgdSettings, pgd_outcomes, robustness_table
from ccc_ray.saliency import calibrated_iou, gradient_saliency, random_saliency

EPSILONS = [0.0, 0.02, 0.05, 0.1, 0.15, 0.2]
CHANGE = 0.1  # a pixel counts as changed when it moved by more than this


def train_classifier(dataset, seed: int, epochs: int = 10, num_outputs: int | None = None) -> SmallCNN:
    """A SmallCNN as tests/conftest.py trains one (Adam 2e-3, batch 64, 1-pixel shifts)."""
    torch.manual_seed(seed)
    model = SmallCNN(dataset.image_shape, num_outputs or dataset.num_classes)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(dataset.train_images, dataset.train_labels),
                                         batch_size=64, shuffle=True, generator=generator)
    for _ in range(epochs):
        train_epoch(model, loader, optimizer, torch.device("cpu"), 1, generator)
    return model.eval()


def accuracy(model, images, labels) -> float:
    return float((predict_logits(model, images).argmax(1) == labels).float().mean())


def fit(method: CounterfactualGAN, dataset, log_every: int = 500) -> float:
    """The orchestration loop in miniature; returns seconds."""
    cfg = method.config
    data = method.training_data(dataset)
    generator = torch.Generator().manual_seed(cfg.seed)
    start = time.time()
    while method.step < cfg.steps:
        loader = torch.utils.data.DataLoader(data, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                                             generator=generator)
        for batch in loader:
            torch.manual_seed(cfg.seed * 100003 + method.step)  # dropout: the global RNG, per step
            parts = method.training_step(batch, torch.Generator().manual_seed(cfg.seed * 100003 + method.step),
                                         cfg.batch_size)
            if method.step % log_every == 0 or method.step == cfg.steps:
                print(f"  step {method.step} ({time.time() - start:.0f} s)",
                      {k: round(v, 3) for k, v in parts.items()}, flush=True)
            if method.step >= cfg.steps:
                break
    return time.time() - start


def digits_figures(method, data, judge, run_classifier) -> dict:
    targets = torch.arange(500) % data.num_classes
    sampled = method.sample_with_lineage(targets, 0, data)
    sources = method.source_images(data, targets, 0)[0]
    change = (sampled.images - sources).abs()
    joint_predictions = predict_logits(method.joint, sampled.images).argmax(1)
    return {
        "judge_target_rate": float((predict_logits(judge, sampled.images).argmax(1) == targets).float().mean()),
        "run_classifier_target_rate": float((predict_logits(run_classifier, sampled.images).argmax(1) == targets)
                                            .float().mean()),
        "joint_target_rate": float((joint_predictions == targets).float().mean()),
        "joint_fake_rate": float((joint_predictions == data.num_classes).float().mean()),
        "mean_l1_change": float(change.mean()),
        "share_pixels_changed": float((change > CHANGE).float().mean()),
        "mean_mask": float(sampled.masks.mean()),
        "joint_clean_accuracy": accuracy(method.joint, data.test_images, data.test_labels),
        "run_classifier_clean_accuracy": accuracy(run_classifier, data.test_images, data.test_labels),
        "judge_clean_accuracy": accuracy(judge, data.test_images, data.test_labels),
    }


def pgd_figures(method, data, run_classifier) -> dict:
    rows = {}
    for name, model, outputs in (("joint", method.joint, None), ("joint_class_head", method.joint, data.num_classes),
                                 ("classifier", run_classifier, None)):
        rows[name] = robustness_table(model, data.test_images, data.test_labels, EPSILONS, steps=10, seed=0,
                                      class_outputs=outputs)
    return {"pgd": [{"epsilon": epsilon, **{name: rows[name][i]["accuracy"] for name in rows}}
                    for i, epsilon in enumerate(EPSILONS)]}


def threat_figures(method, data, run_classifier) -> dict:
    k = data.num_classes
    rows = []
    for epsilon in EPSILONS:
        # 10 steps, one random-start generator seeded 0, eval mode: the same starts as `robustness_table`.
        outcomes = lambda model, attack: {name: round(value, 4) for name, value in pgd_outcomes(  # noqa: E731
            model, data.test_images, data.test_labels, epsilon, k, attack, PgdSettings(steps=10, seed=0)).items()}
        row = {"epsilon": epsilon, "classifier": outcomes(run_classifier, "all_outputs")}
        for attack in ("class_head", "all_outputs", "wrong_class"):
            row[f"joint {attack}"] = outcomes(method.joint, attack)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return {"threats": rows}


FAMILY_BUDGETS = {  # the scorecard's budgets (issue 12); per class: searches run one seeded run per sample
    "inversion": ({"steps": 300}, 50),
    "direct_encoding": ({"max_generations": 100}, 10),
    "cppn": ({"max_generations": 100}, 10),
    "gradient_ascent": ({}, 20),
    "substrate_gan": ({}, 50),  # its own 2,000 steps: at 300 none of 500 reached 0.99
}


def family_counterfeits(data, run_classifier, cache: str | None) -> dict:
    """Per scorecard family: (images, kept) against the run's classifier; kept = confidence >= 0.99 stored."""
    import dataclasses
    import os
    from types import SimpleNamespace

    from ccc_ray.counterfeits.keep import score_as_stored
    from ccc_ray.counterfeits.quality import dequantize
    from ccc_ray.counterfeits.scorecard import attack_family, deployed_threshold
    from ccc_ray.methods import METHODS

    if cache and os.path.exists(cache):
        return torch.load(cache, weights_only=True)
    run_classifier.eval().requires_grad_(False)
    target = SimpleNamespace(kind="torch", reject_class=False, path="the run's classifier")
    decision = deployed_threshold(target, run_classifier, data)
    sets = {}
    for family, (budget, per_class) in FAMILY_BUDGETS.items():
        cls = METHODS[family]
        config = dataclasses.replace(cls.config_class(), **budget)
        start = time.time()
        attack = attack_family(cls, config, run_classifier, decision, data, per_class, 0, 0.99)
        scored = score_as_stored(attack.images, attack.targets, run_classifier, 0.99)
        sets[family] = {"images": dequantize(attack.images), "kept": scored.kept}
        print(f"  {family}: {int(scored.kept.sum())}/{len(scored.kept)} kept ({time.time() - start:.0f} s)",
              flush=True)
    run_classifier.requires_grad_(True)
    if cache:
        torch.save(sets, cache)
    return sets


def ood_all_figures(method, data, run_classifier, cache: str | None) -> dict:
    from ccc_ray.counterfeits.keep import score_as_stored

    sets, counts = {}, {}
    for family, made in family_counterfeits(data, run_classifier, cache).items():
        kept = made["kept"]
        # Too few kept to measure: the method's raw samples instead, named so.
        name = family if int(kept.sum()) >= 20 else f"{family} (all samples)"
        sets[name] = made["images"][kept] if int(kept.sum()) >= 20 else made["images"]
        counts[name] = [int(kept.sum()), len(kept)]
    targets = torch.arange(500) % data.num_classes
    counterfactuals = method.sample_with_lineage(targets, 0, data).images  # sources: test images, held out
    kept = score_as_stored(counterfactuals, targets, run_classifier.eval(), 0.99).kept
    sets["counterfactual"] = counterfactuals[kept]
    counts["counterfactual"] = [int(kept.sum()), len(kept)]
    sets |= real_ood_images(data.image_shape, 500, seed=0)
    sets["uniform_noise"] = torch.rand(500, *data.image_shape, generator=torch.Generator().manual_seed(0))
    table = {}
    for detector, (model, score, reject) in detectors(method, run_classifier).items():
        in_scores = ood_score(score, predict_logits(model, data.test_images), reject_class=reject)
        table[detector] = {name: round(ood_metrics(in_scores, ood_score(score, predict_logits(model, images),
                                                                         reject_class=reject))["auroc"], 4)
                           for name, images in sets.items()}
    return {"ood_all_auroc": table, "ood_all_counts": counts}


def detectors(method, run_classifier) -> dict:
    """name -> (model, score, reject_class)."""
    return {
        "joint 1-p(fake)": (method.joint, "not_reject", True),
        "joint max_softmax": (method.joint, "max_softmax", True),
        "joint max_logit": (method.joint, "max_logit", True),
        "joint energy": (method.joint, "negative_energy", True),
        "classifier max_softmax": (run_classifier, "max_softmax", False),
        "classifier max_logit": (run_classifier, "max_logit", False),
        "classifier energy": (run_classifier, "negative_energy", False),
    }


def inversion_counterfeits(data, classifier, count: int, steps: int = 300) -> torch.Tensor:
    from ccc_ray.methods.inversion import InversionConfig, NetworkInversion

    frozen = classifier.eval().requires_grad_(False)
    method = NetworkInversion(InversionConfig(batch_size=64, steps=steps), MethodContext(data.image_shape,
                                                                                          data.num_classes, frozen))
    for step in range(steps):
        torch.manual_seed(step)
        method.training_step(None, torch.Generator().manual_seed(step), 64)
    classifier.requires_grad_(True)
    return method.sample(torch.arange(count) % data.num_classes, seed=0)


def ood_figures(method, data, run_classifier, inversion_steps: int) -> dict:
    count = 500
    sets = real_ood_images(data.image_shape, count, seed=0)
    sets["uniform_noise"] = torch.rand(count, *data.image_shape, generator=torch.Generator().manual_seed(0))
    sets["inversion_counterfeits"] = inversion_counterfeits(data, run_classifier, count, inversion_steps)
    table = {}
    for detector, (model, score, reject) in detectors(method, run_classifier).items():
        in_scores = ood_score(score, predict_logits(model, data.test_images), reject_class=reject)
        table[detector] = {name: round(ood_metrics(in_scores, ood_score(score, predict_logits(model, images),
                                                                         reject_class=reject))["auroc"], 4)
                           for name, images in sets.items()}
    return {"ood_auroc": table}


def defect_figures(config: CounterfactualConfig, data, defect_steps: int, save_dir: str | None) -> dict:
    defects = defect_data(data, seed=0)
    dataset = defects.dataset
    plain = train_classifier(dataset, seed=2)
    settings = config_to_dict(config) | {"steps": defect_steps}
    method = CounterfactualGAN(config_from_dict(CounterfactualConfig, settings),
                               MethodContext(dataset.image_shape, 2, plain))
    seconds = fit(method, dataset)
    if save_dir:
        torch.save(method.state_dict(), f"{save_dir}/defects.pt")
    train_rows = torch.nonzero(dataset.train_labels == 1).flatten()
    test_rows = torch.nonzero(dataset.test_labels == 1).flatten()
    calibration = (dataset.train_images[train_rows], defects.train_masks[train_rows])
    test = (dataset.test_images[test_rows], defects.test_masks[test_rows])
    clean = torch.zeros(len(test_rows), dtype=torch.long)
    to_clean = lambda images: method.counterfactuals(images, torch.zeros(len(images), dtype=torch.long))  # noqa: E731
    saliency = {
        "counterfactual mask": lambda images: to_clean(images)[1],
        "counterfactual |x' - x|": lambda images: edit_map(images, to_clean(images)[0]),
        "gradient saliency": lambda images: gradient_saliency(plain, images, torch.ones(len(images), dtype=torch.long)),
        "random": lambda images: random_saliency((len(images), *images.shape[2:]), seed=len(images)),
        # Defects are bright marks: a map that is just the image tells how much "find bright pixels" earns.
        "brightness": lambda images: images.amax(1),
    }
    ious = {name: calibrated_iou((fn(calibration[0]), calibration[1]), (fn(test[0]), test[1]))
            for name, fn in saliency.items()}
    translated = method.counterfactuals(test[0], clean)[0]
    return {"defect_iou": ious, "defect_train_seconds": round(seconds, 1),
            "defect_plain_accuracy": accuracy(plain, dataset.test_images, dataset.test_labels),
            "defect_joint_accuracy": accuracy(method.joint, dataset.test_images, dataset.test_labels),
            "defect_to_clean_rate": float((predict_logits(plain, translated).argmax(1) == 0).float().mean()),
            "defect_mean_true_mask_pixels": float(test[1].float().sum((1, 2)).mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--label", default="default")
    parser.add_argument("--results", default=None, help="append one JSON line of figures here")
    parser.add_argument("--set", action="append", default=[], help="config override field=value (repeatable)")
    parser.add_argument("--parts", default="digits,pgd,ood,defects")
    parser.add_argument("--defect-steps", type=int, default=None, help="steps on the defect set (default: steps)")
    parser.add_argument("--inversion-steps", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--save-dir", default=None, help="keep the trained methods' states here")
    parser.add_argument("--load-dir", default=None, help="load the digits state a --save-dir run kept; no training")
    parser.add_argument("--cache", default=None, help="ood_all: keep / reuse the families' counterfeits in this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = dict(item.split("=", 1) for item in args.set)
    config = config_from_dict(CounterfactualConfig, overrides)
    validate_config(config)
    parts = args.parts.split(",")
    data = load_dataset(DataConfig())
    figures: dict = {"label": args.label, "overrides": overrides, "steps": config.steps}
    if {"digits", "pgd", "threats", "ood", "ood_all"} & set(parts):
        run_classifier, judge = train_classifier(data, seed=0), train_classifier(data, seed=1)
        method = CounterfactualGAN(config, MethodContext(data.image_shape, data.num_classes, run_classifier))
        if args.load_dir:
            method.load_state_dict(torch.load(f"{args.load_dir}/digits.pt", weights_only=True))
        else:
            figures["train_seconds"] = round(fit(method, data), 1)
        if args.save_dir:
            torch.save(method.state_dict(), f"{args.save_dir}/digits.pt")
        method.joint.eval()
        if "digits" in parts:
            figures |= digits_figures(method, data, judge, run_classifier)
            print(json.dumps({k: v for k, v in figures.items()}), flush=True)
        if "pgd" in parts:
            figures |= pgd_figures(method, data, run_classifier)
            print(json.dumps(figures["pgd"]), flush=True)
        if "ood" in parts:
            figures |= ood_figures(method, data, run_classifier, args.inversion_steps)
            print(json.dumps(figures["ood_auroc"], indent=1), flush=True)
        if "threats" in parts:
            figures |= threat_figures(method, data, run_classifier)
        if "ood_all" in parts:
            figures |= ood_all_figures(method, data, run_classifier, args.cache)
            print(json.dumps(figures["ood_all_auroc"], indent=1), flush=True)
    if "defects" in parts:
        figures |= defect_figures(config, data, args.defect_steps or config.steps, args.save_dir)
    print(json.dumps(figures, indent=1))
    if args.results:
        with open(args.results, "a") as out:
            out.write(json.dumps(figures) + "\n")


if __name__ == "__main__":
    main()
