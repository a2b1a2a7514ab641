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
    "pipeline": "train-classifier -> train-generator -> generate, on the embedded digits by default.",
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


COMMANDS: dict[str, Callable[[JobConfig], None]] = {
    "train-classifier": _train_classifier,
    "train-generator": _train_generator,
    "generate": _generate,
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
