"""The human-readable side of a run folder: report.md, a counterfeit grid and ROC curves (PNG).

matplotlib draws off-screen (Agg); every file is written whole or not at all.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from ccc_ray.store.files import atomic_write_bytes


def _figure_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def counterfeit_grid_png(images: torch.Tensor, targets: torch.Tensor, class_names: list[str], path: str | Path,
                         per_class: int = 8) -> None:
    """One row per class with up to `per_class` of its counterfeits (images N x C x H x W in [0, 1])."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows = len(class_names)
    figure, axes = plt.subplots(rows, per_class, figsize=(per_class * 0.8, rows * 0.8), squeeze=False)
    for row, name in enumerate(class_names):
        chosen = images[targets == row][:per_class]
        for column in range(per_class):
            axis = axes[row][column]
            axis.set_xticks([])
            axis.set_yticks([])
            if column < len(chosen):
                picture = chosen[column].permute(1, 2, 0).numpy()
                axis.imshow(picture[..., 0] if picture.shape[2] == 1 else picture, cmap="gray", vmin=0, vmax=1)
            if column == 0:
                axis.set_ylabel(name, rotation=0, labelpad=12, va="center")
    figure.suptitle("counterfeits per target class")
    atomic_write_bytes(path, _figure_bytes(figure))
    plt.close(figure)


def judged_grid_png(rows: dict[str, tuple[torch.Tensor, torch.Tensor, list[str]]], class_names: list[str],
                    path: str | Path) -> None:
    """One row per scorecard family (and budget): samples that fooled the deployed model (uint8 N x C x H x W),
    each titled with its target and the worst judge's verdict (far / wrong / confirmed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    names = list(rows) or ["(no family)"]
    columns = max([len(targets) for _, targets, _ in rows.values()] + [1])
    figure, axes = plt.subplots(len(names), columns, figsize=(columns * 0.9, len(names) * 1.05), squeeze=False)
    colours = {"far": "tab:red", "wrong": "tab:red", "confirmed": "tab:green"}
    for row, name in enumerate(names):
        images, targets, verdicts = rows.get(name, (torch.empty(0), torch.empty(0), []))
        for column in range(columns):
            axis = axes[row][column]
            axis.set_xticks([])
            axis.set_yticks([])
            if column < len(verdicts):
                picture = images[column].permute(1, 2, 0).float().numpy() / 255.0
                axis.imshow(picture[..., 0] if picture.shape[2] == 1 else picture, cmap="gray", vmin=0, vmax=1)
                axis.set_title(f"{class_names[int(targets[column])]}: {verdicts[column]}", fontsize=6,
                               color=colours.get(verdicts[column], "black"))
            if column == 0:
                axis.set_ylabel(name, rotation=0, labelpad=30, va="center", fontsize=7)
    figure.suptitle("samples that fooled the model: target and verdict (far / wrong: a failure; confirmed: "
                    "the judge agrees)", fontsize=8)
    atomic_write_bytes(path, _figure_bytes(figure))
    plt.close(figure)


def roc_curves_png(curves: dict[str, tuple[np.ndarray, np.ndarray, float]], path: str | Path, title: str) -> None:
    """ROC curves (in-distribution = positive), one per OOD set: name -> (fpr, tpr, auroc)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    for name, (fpr, tpr, auroc) in curves.items():
        axis.plot(fpr, tpr, label=f"{name} (AUROC {auroc:.3f})")
    axis.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    axis.axhline(0.95, color="grey", linestyle="--", linewidth=0.8)
    axis.set_xlabel("false positive rate (OOD accepted)")
    axis.set_ylabel("true positive rate (in-distribution accepted)")
    axis.set_title(title)
    axis.legend(loc="lower right", fontsize=8)
    atomic_write_bytes(path, _figure_bytes(figure))
    plt.close(figure)


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _num(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def render_report_md(report: dict) -> str:
    """report.json as Markdown: one table of the headline figures per round, then per-set details."""
    rounds = report["rounds"]
    score = report["score"]
    sets = list(dict.fromkeys(name for row in rounds for name in row["ood"]))  # per-family sets may join later
    lines = [f"# ccc-ray hardening report: run `{report['run_id']}`", "",
             f"Data `{report['data']}`, mode `{report['mode']}`, OOD score `{score}` (round 0 is the baseline, "
             "scored with max_softmax where it has no reject output). In-distribution images are the positive "
             "class; the acceptance threshold keeps 95% of the in-distribution test set.", "",
             "| round | clean accuracy | " + " | ".join(f"AUROC {name}" for name in sets)
             + " | FPR95 held-out | re-attack success |",
             "|---|---|" + "---|" * len(sets) + "---|---|"]
    for row in rounds:
        used = row["score"]
        aurocs = " | ".join(_num(row["ood"][name][used]["auroc"]) if name in row["ood"] else "-" for name in sets)
        lines.append(f"| {row['round']} | {_pct(row['clean_accuracy'])} | {aurocs} | "
                     f"{_pct(row['ood'][sets[0]][used]['fpr95'])} | {_pct(row['attack']['success_rate'])} |")
    if report.get("stopped_after_round"):
        lines += ["", f"Asked for {report['rounds_asked']} rounds; stopped after round {report['stopped_after_round']}: "
                      "no attack of that round found a far counterfeit, so another round would train on the same "
                      "pool and repeat it."]
    lines += ["", "Re-attack success: share of a fresh generator's samples against that round's model that reach "
              f"confidence >= {report.get('confidence_bar', 0.99)} (the keep rule's bar) on their target on the "
              "stored image, pass the OOD score's 95%-TPR acceptance threshold and are not of their target: far "
              "from the data (the far rule), or near it and named another class by a judge (the scorecard's "
              "definition of a success).", ""]
    for row in rounds:
        lines += [f"## Round {row['round']} (`{row['score']}`, threshold {row['threshold95']:.4g})", "",
                  "| OOD set | score | AUROC | AUPR-in | AUPR-out | FPR95 |", "|---|---|---|---|---|---|"]
        for name in sets:
            for score_name, metrics in row["ood"].get(name, {}).items():
                lines.append(f"| {name} | {score_name} | {_num(metrics['auroc'])} | {_num(metrics['aupr_in'])} | "
                             f"{_num(metrics['aupr_out'])} | {_pct(metrics['fpr95'])} |")
        attack = row["attack"]
        lines += ["", f"Counterfeits: {row['counterfeits_train']} for training, {row['counterfeits_held_out']} held "
                      f"out. Re-attack: {attack['samples']} samples, {_pct(attack['confident_share'])} confident, "
                      f"{_pct(attack['accepted_share'])} accepted, "
                      f"{_pct(attack.get('confident_and_accepted_share', attack['success_rate']))} both, "
                      f"{_pct(attack['success_rate'])} both and not of the target (far "
                      f"{_pct(attack.get('far_success_rate', attack['success_rate']))}; near share "
                      f"{_pct(attack.get('near_share', 0.0))}, of which the judges confirm the target "
                      f"{_pct(attack.get('confirmed_share', attack.get('near_share', 0.0)))} of the fooling "
                      "samples).", ""]
    carded = [row for row in rounds if row.get("scorecard")]
    if carded:
        families = list(carded[0]["scorecard"])
        lines += ["## Attack scorecard per round", "",
                  "Success: confident at the bar AND accepted by the round's OOD threshold AND not of its target "
                  "(far from the data, or near it and named another class by the judge; the worst judge's rate: "
                  "`ccc-ray scorecard`; each round's folder holds its scorecard.md and scorecard-judged.png). "
                  "Confirmed share (the judge names the target: not failures) in brackets.", "",
                  "| round | " + " | ".join(families) + " |", "|---|" + "---|" * len(families)]
        for row in carded:
            cells = [f"{_pct(row['scorecard'][f]['success_rate'])} ({_pct(row['scorecard'][f]['confirmed_share'])})"
                     if f in row["scorecard"] else "-" for f in families]
            lines.append(f"| {row['round']} | " + " | ".join(cells) + " |")
        lines.append("")
    export = report.get("export")
    if export:
        parity = export["parity_max_abs_probability_difference"]
        lines += ["## ONNX export", "", f"`{export['onnx']}`: score `{export['score']}`, threshold "
                  f"{export['threshold']:.6g}; max |p_torch - p_onnx| real {parity['real']:.2e}, "
                  f"counterfeit {parity['counterfeit']:.2e}.", ""]
    return "\n".join(lines)


def write_report_md(report: dict, path: str | Path) -> None:
    atomic_write_bytes(path, render_report_md(report).encode())


# ---- the attack scorecard -------------------------------------------------------------------------------

def _per_success(value) -> str:
    return "-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def render_scorecard_md(card: dict) -> str:
    """scorecard.json as Markdown: the rules and judges it was judged by, then one row per family and budget."""
    ood, far = card["ood"], card["far"]
    box = "white box (torch file)" if card["model_kind"] == "torch" else "black box (ONNX file)"
    judges = card.get("judges", [])
    lines = [f"# ccc-ray attack scorecard: `{card['model']}`", "",
             f"{box}, fingerprint `{card['classifier_sha256'][:12]}`. A success is a sample that is **confident** "
             f"(softmax of its target >= {card['confidence_bar']} on the stored uint8 image), **accepted** "
             f"(OOD score `{ood['score']}` >= {ood['ood_threshold']:.6g}, threshold from the {ood['source']}) "
             f"**and not of its target**: far from the data (nearest training image at >= {far['radius']:.4g} in "
             f"{far['space']} space: the {far['percentile']:g}th percentile of held-out real images' own nearest "
             "distance), or near it and named another class by the judge. Every family attacks the deployed "
             "decision (class and OOD acceptance together). The rate is the worst judge's; confirmed share: of the "
             "samples that were confident and accepted, the share that judge still names the target (not failures).",
             "", "Judges (accuracy on the run's held-out real images): "
             + "; ".join(f"`{j['name']}` ({j['mechanism'].replace('_', ' ')}, {_pct(j['accuracy'])})" for j in judges)
             + ".", "",
             "| family | budget | box | samples | confident & accepted | far | success rate | by judge "
             "| confirmed share | evaluations | to first success | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in card["families"]:
        by_judge = ", ".join(f"{name} {_pct(figures['success_rate'])}" for name, figures in row["judges"].items())
        first = row.get("evaluations_to_first_success")
        lines.append(f"| {row['family']} | {row['budget_scale']:g}x | {'black' if row['black_box'] else 'white'} | "
                     f"{row['samples']} | {row['confident_and_accepted']} | {row['far']} | "
                     f"**{_pct(row['success_rate'])}** ({row['successes']}) | {by_judge} | "
                     f"{_pct(row['confirmed_share'])} | {row['evaluations']:,} | "
                     f"{'-' if first is None else f'{first:,}'} | {row['seconds']:.1f} |")
    settings = card["settings"]
    lines += ["", f"Budget at 1x: {settings['per_class']} samples per class and family; trained families "
              f"{settings['generator_steps'] or 'their own'} steps, evolution {settings['generations'] or 'its own'} "
              f"generations, others their own section's budget (each row's `budget` in scorecard.json); a row at "
              f"Nx multiplies its family's budget field by N. Wall clock {card['wall_seconds']:.1f} s. "
              "scorecard-judged.png shows samples per family with their verdicts.", ""]
    return "\n".join(lines)


def scorecard_table(card: dict) -> str:
    """The card as a plain-text table for the terminal."""
    header = (f"{'family':<18}{'budget':>7}{'success':>9}{'confirmed':>11}{'conf&acc':>10}{'evals/success':>15}"
              f"{'s/success':>11}")
    rows = [header]
    for row in card["families"]:
        rows.append(f"{row['family']:<18}{row['budget_scale']:>6g}x{_pct(row['success_rate']):>9}"
                    f"{_pct(row['confirmed_share']):>11}{row['confident_and_accepted']:>6}/{row['samples']:<3}"
                    f"{_per_success(row['evaluations_per_success']):>15}{_per_success(row['seconds_per_success']):>11}")
    return "\n".join(rows)


def scorecard_png(card: dict, path: str | Path) -> None:
    """One bar chart: per family, the share confident, confident and accepted, and successes (also far)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows = card["families"]
    x = np.arange(len(rows))
    shares = {"confident": [r["confident"] / max(r["samples"], 1) for r in rows],
              "confident & accepted": [r["confident_and_accepted"] / max(r["samples"], 1) for r in rows],
              "success (not the target)": [r["success_rate"] for r in rows]}
    figure, axis = plt.subplots(figsize=(1.6 + 1.4 * len(rows), 3.6))
    width = 0.26
    for offset, (label, values) in zip((-width, 0, width), shares.items()):
        axis.bar(x + offset, values, width, label=label)
    axis.set_xticks(x, [r["family"] + ("" if r.get("budget_scale", 1) == 1 else f" x{r['budget_scale']:g}")
                        for r in rows], rotation=15)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel(f"share of samples (bar {card['confidence_bar']})")
    axis.set_title(f"attack scorecard: {Path(card['model']).name} ({card['model_kind']})", fontsize=9)
    axis.legend(fontsize=7, loc="upper right")
    atomic_write_bytes(path, _figure_bytes(figure))
    plt.close(figure)
