"""Bad input ends with one line naming the problem, a non-zero exit, and nothing written.

These run the CLI in-process: every check here must fire on the driver before Ray starts.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ccc_ray import cli

REPO = Path(__file__).resolve().parents[2]


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = cli.main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert "error:" in err
    for needle in needles:
        assert needle in err, (needle, err)


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file()) if path.exists() else []


def test_unknown_data_set(capsys, tmp_path):
    out = tmp_path / "out"
    code, err = run_cli(capsys, "train-classifier", "--data.name", "imagenet-21k", "--run.output_dir", str(out))
    assert_one_line_error(code, err, "imagenet-21k", "data.name")
    assert not out.exists()


@pytest.mark.parametrize("threshold", ["0", "-0.5", "1.01", "nan"])
def test_threshold_outside_unit_interval(capsys, tmp_path, threshold):
    out = tmp_path / "out"
    code, err = run_cli(capsys, "generate", "--keep.confidence_bar", threshold, "--run.output_dir", str(out))
    assert_one_line_error(code, err, "keep.confidence_bar")
    assert not out.exists()


def test_missing_classifier_file(capsys, tmp_path):
    out = tmp_path / "out"
    code, err = run_cli(capsys, "train-generator", "--run.output_dir", str(out),
                        "--run.classifier_path", str(tmp_path / "absent.safetensors"))
    assert_one_line_error(code, err, "absent.safetensors", "does not exist")
    assert not out.exists()


def test_missing_initial_weights(capsys, tmp_path):
    out = tmp_path / "out"
    code, err = run_cli(capsys, "train-classifier", "--run.output_dir", str(out),
                        "--classifier.weights", str(tmp_path / "absent.pt"))
    assert_one_line_error(code, err, "absent.pt")
    assert not out.exists()


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, b"not a safetensors file at all" * 10])
def test_corrupted_classifier_file(capsys, tmp_path, content):
    bad = tmp_path / "classifier.safetensors"
    bad.write_bytes(content)
    out = tmp_path / "out"
    code, err = run_cli(capsys, "train-generator", "--run.output_dir", str(out), "--run.classifier_path", str(bad))
    assert_one_line_error(code, err, "classifier.safetensors", "corrupted")
    assert not out.exists()


def test_truncated_classifier_file(capsys, tmp_path, digits_classifier_file):
    raw = digits_classifier_file.read_bytes()
    bad = tmp_path / "classifier.safetensors"
    bad.write_bytes(raw[: len(raw) // 2])
    code, err = run_cli(capsys, "generate", "--run.output_dir", str(tmp_path / "out"),
                        "--run.classifier_path", str(bad))
    assert_one_line_error(code, err, "corrupted")
    assert not (tmp_path / "out").exists()


def test_flipped_weight_bytes_fail_the_fingerprint(capsys, tmp_path, digits_classifier_file):
    raw = bytearray(digits_classifier_file.read_bytes())
    raw[-100] ^= 0xFF  # inside the last tensor's data: the file still parses, its weights changed
    bad = tmp_path / "classifier.safetensors"
    bad.write_bytes(bytes(raw))
    code, err = run_cli(capsys, "train-generator", "--run.output_dir", str(tmp_path / "out"),
                        "--run.classifier_path", str(bad))
    assert_one_line_error(code, err, "fingerprint")


def test_classifier_input_shape_does_not_match_data(capsys, tmp_path, digits_classifier_file):
    code, err = run_cli(capsys, "train-generator", "--data.image_size", "16", "--run.output_dir", str(tmp_path / "o"),
                        "--run.classifier_path", str(digits_classifier_file))
    assert_one_line_error(code, err, "1x8x8", "1x16x16")
    assert not (tmp_path / "o").exists()


def write_image_folder(root: Path, classes: int, size: int = 8, per_class: int = 6) -> None:
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(root / f"class{c}" / f"{i}.png")


def test_classifier_class_count_does_not_match_data(capsys, tmp_path, digits_classifier_file, digits_generator_file):
    write_image_folder(tmp_path / "tree", classes=3)
    code, err = run_cli(capsys, "generate", "--data.name", "image_folder", "--data.root", str(tmp_path / "tree"),
                        "--data.channels", "1", "--run.output_dir", str(tmp_path / "o"),
                        "--run.classifier_path", str(digits_classifier_file),
                        "--run.generator_path", str(digits_generator_file))
    assert_one_line_error(code, err, "10 classes", "3")
    assert not (tmp_path / "o").exists()


def test_user_model_with_wrong_class_count(capsys, tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(
        "import torch\n"
        "def five_way(image_shape, num_classes):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(5))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, err = run_cli(capsys, "train-classifier", "--classifier.arch", "my_models:five_way",
                        "--run.output_dir", str(tmp_path / "o"))
    assert_one_line_error(code, err, "my_models:five_way", "5")
    assert not (tmp_path / "o").exists()


def test_output_path_not_writable(capsys, tmp_path, digits_classifier_file, digits_generator_file):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, err = run_cli(capsys, "generate", "--run.output_dir", str(blocker / "runs"),
                        "--run.classifier_path", str(digits_classifier_file),
                        "--run.generator_path", str(digits_generator_file))
    assert_one_line_error(code, err, "cannot write", "a-file")
    assert blocker.read_text() == "not a folder"
    assert files_under(tmp_path) == [blocker]


def test_read_only_output_dir(capsys, tmp_path, digits_classifier_file, digits_generator_file):
    if os.geteuid() == 0:
        # root ignores permission bits; /proc/<pid> is read-only for everyone.
        target = Path("/proc/self/ccc-out")
    else:
        target = tmp_path / "ro" / "out"
        (tmp_path / "ro").mkdir(mode=0o500)
    code, err = run_cli(capsys, "generate", "--run.output_dir", str(target),
                        "--run.classifier_path", str(digits_classifier_file),
                        "--run.generator_path", str(digits_generator_file))
    assert_one_line_error(code, err, "cannot write")


def test_generate_writes_a_store_that_the_checks_accept(capsys, tmp_path, digits_classifier_file,
                                                       digits_generator_file):
    """The control for the tests above: the same arguments with good input succeed and write output."""
    out = tmp_path / "out"
    code, err = run_cli(capsys, "generate", "--run.output_dir", str(out), "--generate.per_class", "5",
                        "--keep.confidence_bar", "0.05",
                        "--run.classifier_path", str(digits_classifier_file),
                        "--run.generator_path", str(digits_generator_file))
    assert code == 0, err
    assert [p.name for p in files_under(out / "default" / "counterfeits")] == ["inversion-default.parquet"]


def test_job_script_exits_non_zero_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "jobs" / "generate.py"), "--keep.confidence_bar", "2",
                             "--run.output_dir", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "ccc-ray generate: error: keep.confidence_bar: must lie in (0, 1], got 2.0"]
    assert not (tmp_path / "o").exists()


def test_help_explains_each_option():
    result = subprocess.run([sys.executable, "-m", "ccc_ray.cli", "train-generator", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for flag in ("--run.num_workers", "--run.checkpoint_every", "--inversion.steps", "--data.root"):
        assert flag in result.stdout
    assert "resumes" in result.stdout
