"""Ray job: `ccc-ray robustness`. Submit with
`ray job submit --working-dir . -- python jobs/robustness.py [MODEL] [--config FILE] [--section.field VALUE ...]`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the working dir, when not pip-installed

from ccc_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["robustness", *sys.argv[1:]]))
