import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from ccc_ray.classifiers.small_cnn import SmallCNN
from ccc_ray.errors import CccError
from ccc_ray.export.onnx_export import export_onnx
from ccc_ray.export.onnx_runtime import CPU, CUDA, OnnxClassifier, choose_providers
from ccc_ray.ood.scores import max_softmax

torch.set_num_threads(1)


def save_graph(path, op, x_shape, y_shape, elem_type=TensorProto.FLOAT, ir_version=8, **attributes):
    """A one-node ONNX model y = op(x), as IR version 8 (onnx 1.23 defaults to 14, too new for ORT 1.31)."""
    graph = helper.make_graph([helper.make_node(op, ["x"], ["y"], **attributes)], "g",
                              [helper.make_tensor_value_info("x", elem_type, x_shape)],
                              [helper.make_tensor_value_info("y", elem_type, y_shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=ir_version)
    onnx.save(model, str(path))
    return path


def test_choose_providers_on_this_machine():
    providers = choose_providers()
    if torch.cuda.is_available():
        assert providers == [CUDA, CPU]
    else:
        # onnxruntime-gpu lists CUDA even without a GPU; asking for it would print errors.
        assert providers == [CPU]


def test_choose_providers_asks_for_cuda_only_where_it_can_load(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    assert choose_providers() == [CUDA, CPU]
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU])  # CPU-only onnxruntime
    assert choose_providers() == [CPU]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, CPU])
    assert choose_providers() == [CPU]


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    torch.manual_seed(0)
    model = SmallCNN((1, 8, 8), 4).eval()
    path = tmp_path_factory.mktemp("runtime") / "small.onnx"
    export_onnx(model, path, ["a", "b", "c", "d"], (1, 8, 8))
    return model, path


def test_onnx_classifier_is_a_drop_in_classifier_fn(small_model, capfd):
    model, path = small_model
    runtime = OnnxClassifier(path, num_threads=1)
    assert runtime.providers == choose_providers()
    images = torch.rand(6, 1, 8, 8, requires_grad=True)
    logits = runtime(images)
    assert logits.dtype == torch.float32 and logits.shape == (6, 4) and not logits.requires_grad
    assert torch.allclose(logits, model(images).detach(), atol=1e-5)
    assert max_softmax(logits).shape == (6,)
    assert capfd.readouterr().err == ""  # no provider error spam on a machine without a GPU


def test_onnx_classifier_checks_the_images(small_model):
    runtime = OnnxClassifier(small_model[1], num_threads=1)
    with pytest.raises(CccError, match="N x 1 x 8 x 8"):
        runtime(torch.rand(2, 3, 8, 8))
    with pytest.raises(CccError, match="N x 1 x 8 x 8"):
        runtime(torch.rand(8, 8))


@pytest.mark.parametrize("content", [b"not an onnx model at all \x00\xff", b""])
def test_garbage_file_is_a_one_line_error(tmp_path, content):
    path = tmp_path / "garbage.onnx"
    path.write_bytes(content)
    with pytest.raises(CccError, match="not a valid ONNX model") as error:
        OnnxClassifier(path)
    assert "\n" not in str(error.value)
    with pytest.raises(CccError, match="does not exist"):
        OnnxClassifier(tmp_path / "missing.onnx")


def test_unloadable_model_error_keeps_the_reason(tmp_path):
    path = save_graph(tmp_path / "new_ir.onnx", "Identity", ["n", 1, 2, 2], ["n", 1, 2, 2], ir_version=99)
    with pytest.raises(CccError, match="IR version"):
        OnnxClassifier(path)


def test_non_image_inputs_are_refused(tmp_path):
    flat = save_graph(tmp_path / "flat.onnx", "Identity", ["n", 64], ["n", 64])
    with pytest.raises(CccError, match="N x C x H x W"):
        OnnxClassifier(flat)
    ints = save_graph(tmp_path / "ints.onnx", "Identity", ["n", 1, 2, 2], ["n", 1, 2, 2], TensorProto.INT64)
    with pytest.raises(CccError, match="tensor\\(float\\)"):
        OnnxClassifier(ints)


def test_foreign_model_without_metadata_learns_its_width_from_a_forward_pass(tmp_path):
    # Flatten of 1 x 2 x 3 images: 6 "logits", with the output width left symbolic in the file.
    path = save_graph(tmp_path / "foreign.onnx", "Flatten", ["n", 1, 2, 3], None, axis=1)
    runtime = OnnxClassifier(path, num_threads=1)
    assert runtime.image_shape == (1, 2, 3) and runtime.num_classes == 6 and runtime.metadata == {}
    images = torch.arange(12, dtype=torch.float32).reshape(2, 1, 2, 3)
    assert np.array_equal(runtime(images).numpy(), images.reshape(2, 6).numpy())


def test_fixed_batch_models_say_so(tmp_path):
    path = save_graph(tmp_path / "fixed.onnx", "Flatten", [2, 1, 2, 2], [2, 4], axis=1)
    runtime = OnnxClassifier(path, num_threads=1)
    assert runtime(torch.rand(2, 1, 2, 2)).shape == (2, 4)
    with pytest.raises(CccError, match="exactly 2"):
        runtime(torch.rand(3, 1, 2, 2))
