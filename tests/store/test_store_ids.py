"""ccc_ray/store/writer.py: row ids are deterministic and unchanged by the bulk (vectorised) id builder.

Stores already written keep their ids, so re-running an old run id replaces its rows instead of adding
new ones, and the hardening split (by id) does not move.
"""

import hashlib

import numpy as np
import pyarrow.parquet as pq

from ccc_ray.store import CounterfeitWriter, counterfeit_batch
from ccc_ray.store.writer import counterfeit_id, counterfeit_ids

# Ids written by the store before ids were built in bulk (the per-row sha256 of earlier releases).
KNOWN_IDS = {
    ("run-1", "inversion", 7, 0): "6437475ac9aaedbe438a93d1818d6355",
    ("run-1", "inversion", 7, 1): "8b77ca6e02d4629ee531e8e210b70a2e",
    ("run-1", "inversion", 7, 999): "593135aa71e7c16cb6e1422102b6a296",
    ("run-1", "inversion", 7, 123456): "8cd45d5a6755b04054dfd08f367bba36",
    ("digits-2026-11", "map_elites.cppn", -3, 0): "5f6179e1f65bac7d773ebb04f7d15459",
    ("digits-2026-11", "map_elites.cppn", -3, 10**12): "84598e19a00f960670158b2d51c3dca6",
}


def test_ids_are_the_ones_earlier_stores_hold():
    for (run_id, method, seed, index), expected in KNOWN_IDS.items():
        assert counterfeit_id(run_id, method, seed, index) == expected
        assert counterfeit_ids(run_id, method, seed, np.array([index])).to_pylist() == [expected]


def test_bulk_ids_equal_the_row_by_row_definition():
    index = np.concatenate([np.arange(0, 2000), [10**9, 2**62, 7, 7]])  # digit counts 1 to 19, a repeat
    bulk = counterfeit_ids("a-very-long-run-id-" + "x" * 100, "inversion", 12345, index).to_pylist()
    by_row = [hashlib.sha256(f"a-very-long-run-id-{'x' * 100}\x00inversion\x0012345\x00{i}".encode()).hexdigest()[:32]
              for i in index.tolist()]
    assert bulk == by_row
    assert counterfeit_ids("run-1", "inversion", 7, np.array([], np.int64)).to_pylist() == []
    # Names are free text to the hash: a '%' is a character, not a format (the ids are built with bytes %).
    assert counterfeit_ids("r%d%%s", "m%s", -1, np.array([-5, 3])).to_pylist() == [
        counterfeit_id("r%d%%s", "m%s", -1, i) for i in (-5, 3)]


def test_written_store_holds_the_known_ids(tmp_path):
    images = np.zeros((2, 8, 8, 1), np.uint8)
    index = np.array([999, 123456])
    with CounterfeitWriter(tmp_path, "inversion", "run-1", {}, ["a"]) as writer:
        writer.write(counterfeit_batch(images, np.zeros(2), np.zeros(2), np.full(2, 0.99), np.ones(2), index,
                                       run_id="run-1", method="inversion", classifier_sha256="0" * 64, seed=7))
    assert pq.read_table(writer.path)["id"].to_pylist() == [KNOWN_IDS[("run-1", "inversion", 7, i)] for i in index]


# sha256 of the ids of whole runs, joined, as the store wrote them before the id builder was rewritten
# for speed (computed with the code of bdf3ed8): any change to an id of these runs changes the digest.
FROZEN_RUNS = {
    ("digits-run.r2", "map_elites.cppn", -17, "0..19999, 10**15, 2**63-1, 0"):
        "16adad7a741cd6d3931e90a2bf025afb3c3850df4c3921e3f1b38c557aad5305",
    ("bench", "inversion", 7, "0..49999"): "811104881a68bd8d2aae79439f87cb5b8cda941659d4464b00cef485b2edfd8b",
}


def test_ids_of_whole_runs_match_the_frozen_digests():
    runs = {
        ("digits-run.r2", "map_elites.cppn", -17): np.concatenate([np.arange(0, 20000), [10**15, 2**63 - 1, 0]]),
        ("bench", "inversion", 7): np.arange(50000),
    }
    for (run_id, method, seed, _), expected in FROZEN_RUNS.items():
        ids = counterfeit_ids(run_id, method, seed, runs[(run_id, method, seed)]).to_pylist()
        assert hashlib.sha256("".join(ids).encode()).hexdigest() == expected
