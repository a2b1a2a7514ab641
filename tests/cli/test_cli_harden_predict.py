"""`ccc-ray harden` refuses bad stores and settings before writing anything; `ccc-ray predict` end to end."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from ccc_ray import cli
from ccc_ray.classifiers.weights import load_classifier
from ccc_ray.export.onnx_export import export_onnx
from ccc_ray.store import CounterfeitWriter, counterfeit_batch


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def write_store(folder, n=60, shape=(8, 8, 1), classes=10, names=None):
    images = np.random.default_rng(0).integers(0, 256, size=(n, *shape), dtype=np.uint8)
    targets = np.arange(n) % classes
    with CounterfeitWriter(folder, "inversion", "r0", {}, names or [str(i) for i in range(classes)]) as writer:
        writer.write(counterfeit_batch(images, targets, targets, np.full(n, 0.995), np.full(n, 3.0), np.arange(n),
                                       run_id="r0", method="inversion", classifier_sha256="ab" * 32, seed=1))
    return writer.path


@pytest.fixture
def run_folder(tmp_path, digits_classifier_file, digits_generator_file):
    """A run folder with classifier and generator in place, as after train-inversion."""
    run = tmp_path / "runs" / "default"
    run.mkdir(parents=True)
    (run / "classifier.safetensors").write_bytes(digits_classifier_file.read_bytes())
    (run / "generator-inversion.safetensors").write_bytes(digits_generator_file.read_bytes())
    return run


def assert_refused(capsys, run_folder, store, *needles):
    before = sorted(p.relative_to(run_folder) for p in run_folder.rglob("*"))
    code, _, err = run_cli(capsys, "harden", "--run.output_dir", str(run_folder.parent),
                           "--harden.stores", str(store))
    assert code == 2
    assert len(err.splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert sorted(p.relative_to(run_folder) for p in run_folder.rglob("*")) == before  # nothing written


def test_store_with_wrong_schema(capsys, tmp_path, run_folder):
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"id": ["a"], "pixels": [b"\x00" * 64]}), bad)
    assert_refused(capsys, run_folder, bad, "bad.parquet", "schema")


def test_store_with_wrong_image_shape(capsys, tmp_path, run_folder):
    store = write_store(tmp_path / "s", shape=(16, 16, 1))
    assert_refused(capsys, run_folder, store, "16x16", "1x8x8")


def test_store_with_wrong_class_count(capsys, tmp_path, run_folder):
    store = write_store(tmp_path / "s", classes=12)
    assert_refused(capsys, run_folder, store, "class", "10")


def test_empty_store(capsys, tmp_path, run_folder):
    (tmp_path / "empty").mkdir()
    assert_refused(capsys, run_folder, tmp_path / "empty")
    store = write_store(tmp_path / "s", n=0)
    assert_refused(capsys, run_folder, store, "empty")


def test_store_that_is_not_parquet(capsys, tmp_path, run_folder):
    bad = tmp_path / "x.parquet"
    bad.write_bytes(b"PAR1 this is not parquet")
    assert_refused(capsys, run_folder, bad, "x.parquet")


@pytest.mark.parametrize("rounds", ["0", "-2"])
def test_round_count_below_one(capsys, tmp_path, rounds):
    for flag in ("--rounds", "--harden.rounds"):
        code, _, err = run_cli(capsys, "harden", flag, rounds, "--run.output_dir", str(tmp_path / "o"))
        assert code == 2 and "harden.rounds" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_predict_refuses_a_file_that_is_not_onnx(capsys, tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"\x08\x07 definitely not a protobuf model")
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    code, out, err = run_cli(capsys, "predict", str(fake), str(image))
    assert code == 2 and "not a valid ONNX model" in err and len(err.splitlines()) == 1
    assert out == ""


def test_predict_prints_class_confidence_and_flag(capsys, tmp_path, digits, digits_classifier_file):
    model, info = load_classifier(digits_classifier_file)
    onnx_file = tmp_path / "m.onnx"
    export_onnx(model, onnx_file, list(info.class_names), info.image_shape, "max_softmax", threshold=0.9)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(4):  # real digits, written as 8x8 PNGs
        pixels = (digits.test_images[i, 0].numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i}.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / "rgb.jpg")
    store = write_store(tmp_path / "s", n=5)
    code, out, err = run_cli(capsys, "predict", str(onnx_file), str(folder), str(store))
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split("\t") == ["input", "class", "confidence", "max_softmax", "ood"]
    rows = [line.split("\t") for line in lines[1:]]
    assert len(rows) == 4 + 1 + 5
    with torch.no_grad():  # the PNGs hold the uint8-rounded images
        expected = model(digits.test_images[:4].mul(255).round().div(255)).softmax(1)
    for i in range(4):
        row = next(r for r in rows if r[0].endswith(f"{i}.png"))
        assert row[1] == info.class_names[int(expected[i].argmax())]
        assert abs(float(row[2]) - float(expected[i].max())) < 1e-4
        assert row[4] == ("yes" if float(row[3]) < 0.9 else "no")
    assert sum(1 for r in rows if "#" in r[0]) == 5  # store rows are named <store>#<id>


def test_predict_refuses_an_unreadable_image(capsys, tmp_path, digits_classifier_file):
    model, info = load_classifier(digits_classifier_file)
    onnx_file = tmp_path / "m.onnx"
    export_onnx(model, onnx_file, list(info.class_names), info.image_shape)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    code, _, err = run_cli(capsys, "predict", str(onnx_file), str(bad))
    assert code == 2 and "broken.png" in err
