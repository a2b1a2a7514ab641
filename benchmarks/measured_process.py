"""One measurement in a fresh process, shared by the memory benchmarks: peak memory is per process, so each
measurement runs alone in its own, under the code it measures (`PYTHONPATH`), and prints one JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys


def run_measurement(script: str, pythonpath: str, arguments: list[str]) -> dict:
    """`python script --measure ...` with `pythonpath` first on the import path; its last JSON line."""
    env = {**os.environ, "PYTHONPATH": pythonpath}
    # cwd too: Ray's workers put the driver's working folder first on their import path
    done = subprocess.run([sys.executable, script, *arguments], env=env, cwd=pythonpath.split(os.pathsep)[0],
                          capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        raise SystemExit(f"measurement failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1])
