"""Load: `generate` streams rows to Parquet with memory bounded by a batch, not by the row count.

Runs benchmarks/store_load.py (the real generate path fed by stand-in random images; see its docstring)
in fresh processes for 10,000 and 60,000 rows of 3x32x32 images. The extra 50,000 rows are 146 MB of
pixels; holding them, or letting the heap keep every freed batch (as glibc does: about +220 MB here
without `generate.return_freed_memory`), would show in the peak RSS. Measured: +9 to +38 MB.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def test_generate_peak_memory_does_not_grow_with_rows():
    small, large = 10_000, 60_000
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "store_load.py"), "--rows", f"{small},{large}",
                           "--modes", "generate", "--json"], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    runs = {row["rows"]: row for row in map(json.loads, done.stdout.strip().splitlines())}
    assert runs[small]["file_rows"] == small and runs[large]["file_rows"] == large  # every row streamed out
    growth = runs[large]["peak_rss_mb"] - runs[small]["peak_rss_mb"]
    extra_pixels_mb = (large - small) * 3 * 32 * 32 / 2**20
    print(f"peak RSS {runs[small]['peak_rss_mb']:.0f} MB at {small:,} rows, {runs[large]['peak_rss_mb']:.0f} MB at "
          f"{large:,} rows ({growth:+.0f} MB; the extra rows hold {extra_pixels_mb:.0f} MB of pixels)")
    assert growth < 64
