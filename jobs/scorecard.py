"""Ray job: `ccc-ray scorecard`. Submit with
`ray job submit --working-dir . -- python jobs/scorecard.py [MODEL] [--config FILE] [--section.field VALUE ...]`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the working dir, when not pip-installed

from ccc_ray.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["scorecard", *sys.argv[1:]]))
