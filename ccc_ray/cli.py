"""`ccc-ray`: one subcommand per stage, the same flags as `jobs/*.py`.

Every setting is a `--section.field` flag mirroring the YAML file given with `--config`; flags win over
the file, the file wins over defaults. Bad input ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ccc_ray.config import add_config_arguments, overrides_from_args
from ccc_ray.errors import CccError
from ccc_ray.job import dump_job, load_job, section_classes
from ccc_ray.methods import METHODS, method_infos

DESCRIPTIONS = {
    "train-classifier": "Train the classifier to attack (Ray Train) and write classifier.safetensors.",
    "import-classifier": "Adopt a model trained elsewhere as the run's classifier, without training: "
                         "--classifier.arch (a torchvision name or package.module:factory), --classifier.weights "
                         "FILE, and its input preprocessing (--classifier.input_range, --classifier.mean, "
                         "--classifier.std, --classifier.grey_to_rgb); scores it on the run's test split and "
                         "writes classifier.safetensors.",
    "train-generator": "Train a trained method (--generate.method, default inversion) against the frozen classifier "
                       "(Ray Train); re-running the same --run.run_id resumes from its last checkpoint.",
    "generate": "Sample counterfeits per class from the trained method's generator, keep those the keep rule keeps "
                "(confidence >= --keep.confidence_bar on the stored uint8 image), and write them with their lineage "
                "to the Parquet store; with --generate.sources and --generate.targets, translate those images "
                "instead (counterfactual).",
    "attack": "Search counterfeits per class with a search method (--attack.method: direct_encoding or cppn "
              "evolution, black box: the run's classifier or an ONNX model, --attack.onnx_path; gradient_ascent, "
              "white box) as Ray actors; keep by the keep rule and write them to the Parquet store.",
    "harden": "Fine-tune the classifier on counterfeits (reject class or outlier exposure, Ray Train), evaluate "
              "OOD detection before/after, re-attack, repeat for --rounds, and export the result to ONNX.",
    "tune": "Ray Tune search over a trained method's loss weights (ASHA stops poor trials early); writes "
            "tune-trials.csv/.parquet and tune-best.yaml, which `train-generator --config` accepts. Starting "
            "the same search again resumes it.",
    "scorecard": "Run every attack family that applies against MODEL (a torch file: white box, every family; an ONNX "
                 "file: black box, black-box families), one Ray task per family and budget (--scorecard.budget_scales "
                 "1,10: each family's budget times 1 and 10), against the deployed decision (class and OOD "
                 "acceptance); report per family the success rate (confident at --keep.confidence_bar AND accepted "
                 "by the model's OOD threshold AND not of its target: far from the data, --far, or named another "
                 "class by each --judge.judges; the worst judge's rate), the confirmed share, evaluations to the "
                 "first success and per success; writes scorecard.json, scorecard.md, scorecard.png and "
                 "scorecard-judged.png (samples with their verdicts) to the run folder.",
    "robustness": "Accuracy under L-infinity PGD at each --robustness.epsilons for MODEL (a classifier file; "
                  "a hardened or joint K + 1 model is attacked and scored on its class head, or over all its outputs with "
                  "--robustness.attack all_outputs or wrong_class, which add the shares rejected and wrong); prints "
                  "the table and writes robustness-<model>.json to the run folder.",
    "pipeline": "train-classifier -> train-generator -> generate -> harden -> evaluate -> export, on the "
                "embedded digits by default; writes report.json, report.md, counterfeits.png and ROC curves.",
}


def _trained() -> tuple[str, ...]:
    return tuple(name for name, cls in METHODS.items() if cls.kind in ("generator", "joint"))


def _searches() -> tuple[str, ...]:
    return tuple(name for name, cls in METHODS.items() if cls.kind == "search")


def command_sections(command: str) -> tuple[str, ...]:
    """The config sections a subcommand reads: only these get flags in its --help and --print-config."""
    fixed = {
        "train-classifier": ("data", "classifier", "run"),
        "import-classifier": ("data", "classifier", "run"),
        "train-generator": ("data", "keep", "generate", "run") + _trained(),
        "generate": ("data", "keep", "far", "generate", "run"),
        "attack": ("data", "keep", "far", "attack", "run") + _searches(),
        "harden": ("data", "keep", "far", "judge", "generate", "harden", "scorecard", "run") + _trained() + _searches(),
        "tune": ("data", "keep", "generate", "tune", "run") + _trained(),
        "scorecard": ("data", "keep", "scorecard", "far", "judge", "run") + _trained() + _searches(),
        "robustness": ("data", "robustness", "run"),
    }
    return fixed.get(command, tuple(section_classes()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccc-ray", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    classes = section_classes()
    for name, description in DESCRIPTIONS.items():
        command = sub.add_parser(name, help=description, description=description)
        command.add_argument("--config", metavar="YAML", help="settings file (same shape as --print-config; "
                                                              "sections this command does not read are accepted)")
        command.add_argument("--print-config", action="store_true",
                             help="print the resolved settings this command reads as YAML and exit")
        for section in command_sections(name):
            add_config_arguments(command, classes[section], f"{section}.")
        command.add_argument("--data-root", dest="cfg:data.root", metavar="DIR", help="same as --data.root")
        command.add_argument("--download", dest="cfg:data.download", action="store_const", const="true",
                             help="same as --data.download true: fetch a torchvision data set into the root")
        if name == "robustness":
            command.add_argument("cfg:robustness.model", nargs="?", metavar="MODEL",
                                 help="same as --robustness.model: a .safetensors classifier file")
        if name == "scorecard":
            command.add_argument("cfg:scorecard.model", nargs="?", metavar="MODEL",
                                 help="same as --scorecard.model: a .safetensors or .onnx classifier "
                                      "(default: the run's classifier)")
        if name in ("harden", "pipeline"):
            command.add_argument("--rounds", dest="cfg:harden.rounds", type=int, metavar="R",
                                 help="same as --harden.rounds")
    sub.add_parser("methods", help=METHODS_HELP, description=METHODS_HELP)
    predict = sub.add_parser("predict", help=PREDICT_HELP, description=PREDICT_HELP)
    predict.add_argument("model", metavar="MODEL.onnx", help="an ONNX classifier (from `ccc-ray harden`)")
    predict.add_argument("images", metavar="IMAGES", nargs="+",
                         help="image files, folders of images, or Parquet counterfeit stores")
    predict.add_argument("--batch-size", type=int, default=256, help="images per onnxruntime call (default 256)")
    predict.add_argument("--limit", type=int, default=None, help="stop after this many images")
    return parser


METHODS_HELP = ("List every registered counterfeit method: its name, kind (generator: trained against the frozen "
                "classifier; search: nothing to train; joint: trains a classifier too), whether it can attack a "
                "black box (ONNX), its paper and its config section (--<section>.field flags).")


def print_methods() -> None:
    for info in method_infos():
        print(f"{info.name}\n  kind: {info.kind}   black box: {'yes' if info.black_box else 'no'}   "
              f"section: {info.config_section} (--{info.config_section}.FIELD)\n  paper: {info.paper}\n"
              f"  settings: {', '.join(info.settings)}")


PREDICT_HELP = ("Classify images with an exported ONNX model: one line per image with its class, confidence, "
                "OOD score and whether it is flagged as out of distribution (score below the exported threshold).")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "predict":
        from ccc_ray.predict import predict_main

        try:
            return predict_main(args)
        except CccError as error:
            print(f"ccc-ray predict: error: {error}", file=sys.stderr)
            return 2
    if args.command == "methods":
        print_methods()
        return 0
    try:
        from ccc_ray.orchestration.stages import STAGES  # imports Ray: only for the commands that run a stage

        job = load_job(args.config, overrides_from_args(args))
        if args.print_config:
            sys.stdout.write(dump_job(job, command_sections(args.command)))
            return 0
        STAGES[args.command](job)
    except CccError as error:
        print(f"ccc-ray {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ccc-ray {args.command}: interrupted; re-run with the same --run.run_id to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
