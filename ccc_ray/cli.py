"""`ccc-ray`: one subcommand per stage, the same flags as `jobs/*.py`.

Every setting is a `--section.field` flag mirroring the YAML file given with `--config`; flags win over
the file, the file wins over defaults. Bad input ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from ccc_ray.config import (
    add_config_arguments,
    load_config,
    overrides_from_args,
    write_yaml,
)
from ccc_ray.errors import CccError
from ccc_ray.job_config import JobConfig

DESCRIPTIONS = {
    "train-classifier": "Train the classifier to attack (Ray Train) and write classifier.safetensors.",
    "train-generator": "Train the counterfeit generator against the frozen classifier (Ray Train); "
                       "re-running the same --run.run_id resumes from its last checkpoint.",
    "generate": "Sample counterfeits per class, keep those at >= threshold confidence on the stored uint8 "
                "image, and write them with their lineage to the Parquet store.",
    "attack": "Search counterfeits per class with direct-encoding or CPPN evolution (black box: the run's "
              "classifier or an ONNX model, --attack.onnx_path) or gradient ascent, as Ray actors; keep those at "
              ">= threshold on the stored uint8 image and write them to the Parquet store.",
    "harden": "Fine-tune the classifier on counterfeits (reject class or outlier exposure, Ray Train), evaluate "
              "OOD detection before/after, re-attack, repeat for --rounds, and export the result to ONNX.",
    "tune": "Ray Tune search over the generator's loss weights (ASHA stops poor trials early); writes "
            "tune-trials.csv/.parquet and tune-best.yaml, which `train-generator --config` accepts. Starting "
            "the same search again resumes it.",
    "pipeline": "train-classifier -> train-generator -> generate -> harden -> evaluate -> export, on the "
                "embedded digits by default; writes report.json, report.md, counterfeits.png and ROC curves.",
}


def _train_classifier(job: JobConfig) -> None:
    from ccc_ray.stages import dumps, run_train_classifier

    print(dumps(run_train_classifier(job)))


def _train_generator(job: JobConfig) -> None:
    from ccc_ray.stages import dumps, run_train_generator

    print(dumps(run_train_generator(job)))


def _generate(job: JobConfig) -> None:
    from ccc_ray.stages import run_generate, summary_line

    print(summary_line(run_generate(job)))


def _attack(job: JobConfig) -> None:
    from ccc_ray.attack import summary_line
    from ccc_ray.orchestration.attack import run_attack

    print(summary_line(run_attack(job, progress=lambda line: print(line, flush=True))))


def _harden(job: JobConfig) -> None:
    from ccc_ray.orchestration.harden_rounds import run_hardening

    report = run_hardening(job, progress=lambda line: print(line, flush=True))
    print(f"report: {job.run.run_dir / 'report.md'}; ONNX model: {report['export']['onnx']}")


def _tune(job: JobConfig) -> None:
    from ccc_ray.orchestration.tune_losses import run_tune

    summary = run_tune(job, progress=lambda line: print(line, flush=True))
    print(f"{summary['trials']} trials ({summary['completed']} completed, {summary['stopped_early']} stopped early, "
          f"{summary['errors']} failed); best objective {summary['best']['objective']:.4f}; "
          f"best config {summary['best_config']}")


def _pipeline(job: JobConfig) -> None:
    from ccc_ray.stages import (
        dumps,
        run_generate,
        run_train_classifier,
        run_train_generator,
        summary_line,
    )

    print("== train-classifier", flush=True)
    print(dumps(run_train_classifier(job)), flush=True)
    print("== train-generator", flush=True)
    print(dumps(run_train_generator(job)), flush=True)
    print("== generate", flush=True)
    print(summary_line(run_generate(job)), flush=True)
    print("== harden, evaluate, export", flush=True)
    _harden(job)


COMMANDS: dict[str, Callable[[JobConfig], None]] = {
    "train-classifier": _train_classifier,
    "train-generator": _train_generator,
    "generate": _generate,
    "attack": _attack,
    "harden": _harden,
    "tune": _tune,
    "pipeline": _pipeline,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ccc-ray", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, description in DESCRIPTIONS.items():
        command = sub.add_parser(name, help=description, description=description)
        command.add_argument("--config", metavar="YAML", help="settings file (same shape as --print-config)")
        command.add_argument("--print-config", action="store_true",
                             help="print the resolved settings as YAML and exit")
        add_config_arguments(command, JobConfig)
        command.add_argument("--data-root", dest="cfg:data.root", metavar="DIR", help="same as --data.root")
        command.add_argument("--download", dest="cfg:data.download", action="store_const", const="true",
                             help="same as --data.download true: fetch a torchvision data set into the root")
        if name in ("harden", "pipeline"):
            command.add_argument("--rounds", dest="cfg:harden.rounds", type=int, metavar="R",
                                 help="same as --harden.rounds")
    predict = sub.add_parser("predict", help=PREDICT_HELP, description=PREDICT_HELP)
    predict.add_argument("model", metavar="MODEL.onnx", help="an ONNX classifier (from `ccc-ray harden`)")
    predict.add_argument("images", metavar="IMAGES", nargs="+",
                         help="image files, folders of images, or Parquet counterfeit stores")
    predict.add_argument("--batch-size", type=int, default=256, help="images per onnxruntime call (default 256)")
    predict.add_argument("--limit", type=int, default=None, help="stop after this many images")
    return parser


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
    try:
        job = load_config(JobConfig, args.config, overrides_from_args(args))
        if args.print_config:
            write_yaml(job, "/dev/stdout")
            return 0
        COMMANDS[args.command](job)
    except CccError as error:
        print(f"ccc-ray {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ccc-ray {args.command}: interrupted; re-run with the same --run.run_id to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
