"""Untrusted files: a planted pickle is refused without running, and Parquet, ONNX, YAML and image inputs
are validated with one clear line each (exit code 2 from the CLI). Job arguments never reach a shell.

Every file here is what an attacker or a broken job could leave where ccc-ray reads: a checkpoint folder
in `storage_path`, a store, a model, a config, an image.
"""

from __future__ import annotations

import ast
import io
import os
import shlex
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray.train
import torch
from PIL import Image

from ccc_ray import cli
from ccc_ray.errors import CccError
from ccc_ray.orchestration.checkpoints import (
    STATE_FILE,
    checkpoint_to_report,
    load_checkpoint_state,
)
from ccc_ray.store import CounterfeitWriter, counterfeit_batch, read_store
from ccc_ray.store import reader as store_reader

REPO = Path(__file__).resolve().parents[2]


class RunsACommand:
    """Unpickling this calls os.system, which creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def one_line_error(capsys, code: int, *needles: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "error:" in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


# ---------------------------------------------------------------- checkpoints

def test_planted_pickle_checkpoint_is_refused_without_running(tmp_path):
    import pickle

    control = tmp_path / "control"
    pickle.loads(pickle.dumps(RunsACommand(control)))
    assert control.exists()  # the payload is live: a plain unpickle runs it

    marker = tmp_path / "pwned"
    folder = tmp_path / "checkpoint_2026-01-01_00-00-00.000000"
    folder.mkdir()
    torch.save({"generator": RunsACommand(marker), "step": 100}, folder / STATE_FILE)
    with pytest.raises(CccError, match=r"was refused.*posix.system.*nothing in it was run.*new --run.run_id"):
        load_checkpoint_state(ray.train.Checkpoint(str(folder)))
    assert not marker.exists()


@pytest.mark.parametrize("content, message", [
    (b"", "was refused"),
    (b"PK\x03\x04 truncated zip", "was refused"),
    (None, "has no state.pt"),
])
def test_corrupt_or_foreign_checkpoints_are_refused(tmp_path, content, message):
    folder = tmp_path / "checkpoint"
    folder.mkdir()
    if content is not None:
        (folder / STATE_FILE).write_bytes(content)
    with pytest.raises(CccError, match=message):
        load_checkpoint_state(ray.train.Checkpoint(str(folder)))


def test_a_list_instead_of_a_state_is_refused(tmp_path):
    (tmp_path / STATE_FILE).write_bytes(_saved([1, 2, 3]))
    with pytest.raises(CccError, match="holds a list, expected a dict"):
        load_checkpoint_state(ray.train.Checkpoint(str(tmp_path)))


def test_our_own_checkpoints_still_load():
    state = {"generator": {"w": torch.ones(2)}, "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3}]}, "step": 7}
    with checkpoint_to_report(state) as checkpoint:
        loaded = load_checkpoint_state(checkpoint)
    assert loaded["step"] == 7 and torch.equal(loaded["generator"]["w"], torch.ones(2))


def _saved(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


# ---------------------------------------------------------------- Parquet

def good_table(tmp_path: Path) -> pa.Table:
    images = np.random.default_rng(0).integers(0, 256, size=(4, 8, 8, 1), dtype=np.uint8)
    index = np.arange(4)
    with CounterfeitWriter(tmp_path / "good", "inversion", "run", {}, [str(i) for i in range(10)]) as writer:
        writer.write(counterfeit_batch(images, index, index, np.full(4, 0.99), np.full(4, 2.0), index,
                                       run_id="run", method="inversion", classifier_sha256="ab" * 32, seed=1))
    return pq.read_table(writer.path)


def replaced(table: pa.Table, name: str, values: list, type_=None) -> pa.Table:
    field = table.schema.field(name)
    array = pa.array(values, type=type_ or field.type)
    return table.set_column(table.schema.get_field_index(name), pa.field(name, array.type), array)


@pytest.mark.parametrize("name, values, message", [
    ("confidence", [0.99, 1.5, 0.99, 0.99], "column 'confidence' holds values from 0.99 to 1.5, expected [0.0, 1.0]"),
    ("confidence", [0.99, float("nan"), 0.99, 0.99], "column 'confidence' holds NaN or infinite values"),
    ("target", [0, -1, 2, 3], "column 'target' holds values from -1 to 3, expected >= 0"),
    ("id", ["a", None, "c", "d"], "column 'id' has 1 empty values"),
    ("channels", [2, 2, 2, 2], "column 'channels' holds [2], expected 1 or 3"),
    ("height", [0, 0, 0, 0], "column 'height' holds 0 to 0, expected 1 to 4096 pixels"),
    ("image", [b"\x00" * 64, b"\x00" * 63, b"\x00" * 64, b"\x00" * 64],
     "1 images are not height x width x channels bytes long"),
])
def test_store_values_are_validated(tmp_path, name, values, message):
    bad = tmp_path / "bad.parquet"
    pq.write_table(replaced(good_table(tmp_path), name, values), bad)
    with pytest.raises(CccError) as error:
        read_store(bad)
    assert message in str(error.value) and "bad.parquet" in str(error.value)


def test_store_that_would_decompress_too_far_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "big.parquet"
    pq.write_table(good_table(tmp_path), path)
    monkeypatch.setattr(store_reader, "MAX_UNCOMPRESSED_BYTES", 100)
    with pytest.raises(CccError, match="would decompress to .* GiB, more than"):
        read_store(path)


def test_bad_store_as_a_data_set_is_one_line_from_the_cli(tmp_path, capsys):
    bad = tmp_path / "bad.parquet"
    pq.write_table(replaced(good_table(tmp_path), "target", [0, 1, 2, 3], pa.int64()), bad)
    code = cli.main(["train-classifier", "--data.name", "parquet", "--data.root", str(bad),
                     "--run.output_dir", str(tmp_path / "out")])
    one_line_error(capsys, code, "column 'target' is int64, expected int32")


# ---------------------------------------------------------------- ONNX

def onnx_model(path: Path, elem_type: int, shape: list) -> Path:
    import onnx
    from onnx import helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", elem_type, shape)],
                              [helper.make_tensor_value_info("y", elem_type, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("kind, message", [
    ("garbage", "is not a valid ONNX model"),
    ("int64", "is tensor(int64), expected tensor(float)"),
    ("rank2", "expected N x C x H x W with fixed C, H, W"),
])
def test_onnx_models_are_validated(tmp_path, capsys, kind, message):
    import onnx

    path = tmp_path / "model.onnx"
    if kind == "garbage":
        path.write_bytes(b"\x08\x07 not a protobuf of a model" * 10)
    elif kind == "int64":
        onnx_model(path, onnx.TensorProto.INT64, ["N", 1, 8, 8])
    else:
        onnx_model(path, onnx.TensorProto.FLOAT, ["N", 64])
    image = tmp_path / "x.png"
    Image.new("L", (8, 8)).save(image)
    one_line_error(capsys, cli.main(["predict", str(path), str(image)]), message)


# ---------------------------------------------------------------- YAML

@pytest.mark.parametrize("text, message", [
    ("run:\n  run_id: !!python/object/apply:os.system ['touch {marker}']\n", "is not valid YAML"),
    ("- a\n- b\n", "must hold a mapping of sections, not list"),
    ("run:\n  num_workers: many\n", "run.num_workers: expected an integer, got 'many'"),
    ("run:\n  nmu_workers: 2\n", "run: unknown setting 'nmu_workers'"),
    ("keep:\n  confidence_bar: 7\n", "keep.confidence_bar: must lie in (0, 1], got 7"),
])
def test_yaml_configs_are_validated_and_never_construct_objects(tmp_path, capsys, text, message):
    marker = tmp_path / "pwned"
    config = tmp_path / "job.yaml"
    config.write_text(text.format(marker=marker))
    code = cli.main(["generate", "--config", str(config), "--run.output_dir", str(tmp_path / "out")])
    one_line_error(capsys, code, message)
    assert not marker.exists()


# ---------------------------------------------------------------- images

def bomb_png(width: int = 20_000, height: int = 20_000) -> bytes:
    """A 1x1 PNG whose header claims width x height: 400 M pixels, past Pillow's decompression-bomb limit."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    header = bytearray(data[16:29])
    header[0:8] = struct.pack(">II", width, height)
    data[16:29] = header
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(header)))
    return bytes(data)


@pytest.mark.parametrize("content, message", [
    (b"GIF89a but not really", "cannot be read"),
    (None, "decompression bomb"),
])
def test_images_are_validated_for_predict(tmp_path, capsys, content, message):
    from ccc_ray.predict import load_image

    path = tmp_path / "input.png"
    path.write_bytes(bomb_png() if content is None else content)
    with pytest.raises(CccError, match=message):
        load_image(path, (1, 8, 8))


@pytest.mark.parametrize("content, message", [
    (b"\x89PNG\r\n\x1a\n truncated", "is not a readable image"),
    (None, "decompression bomb"),
])
def test_images_are_validated_in_an_image_folder(tmp_path, capsys, content, message):
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        Image.new("L", (8, 8)).save(tmp_path / "data" / name / "fine.png")
    (tmp_path / "data" / "a" / "zz.png").write_bytes(bomb_png() if content is None else content)
    code = cli.main(["train-classifier", "--data.name", "image_folder", "--data.root", str(tmp_path / "data"),
                     "--run.output_dir", str(tmp_path / "out")])
    one_line_error(capsys, code, "zz.png", message)


# ---------------------------------------------------------------- job arguments and shells

SHELL_CALLS = {("os", "system"), ("os", "popen"), ("os", "execl"), ("os", "execlp"), ("os", "execv"),
               ("os", "execvp"), ("os", "spawnl"), ("os", "spawnlp"), ("commands", "getoutput")}


def test_no_code_path_hands_arguments_to_a_shell():
    """ccc_ray/ and jobs/: no os.system/popen/exec*, and no subprocess call with shell=True."""
    offences = []
    for path in sorted([*(REPO / "ccc_ray").rglob("*.py"), *(REPO / "jobs").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) \
                    and (func.value.id, func.attr) in SHELL_CALLS:
                offences.append(f"{path.relative_to(REPO)}:{node.lineno} {func.value.id}.{func.attr}")
            for keyword in node.keywords:
                if keyword.arg == "shell" and not (isinstance(keyword.value, ast.Constant) and keyword.value.value is False):
                    offences.append(f"{path.relative_to(REPO)}:{node.lineno} shell=")
    assert offences == []


def test_shell_syntax_in_job_arguments_is_only_ever_data(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    # A run id becomes a file name: anything but letters, digits, '.', '_', '-' is refused.
    code = cli.main(["generate", "--run.run_id", f"x; touch {marker}", "--run.output_dir", str(tmp_path)])
    one_line_error(capsys, code, "run.run_id: 'x; touch")
    # A path is a path: `$(...)` names a folder, it is not run.
    odd = f"$(touch {marker})"
    code = cli.main(["generate", "--run.output_dir", odd, "--run.classifier_path", str(tmp_path / "none")])
    one_line_error(capsys, code, "does not exist")
    assert not marker.exists()
