from dataclasses import asdict

import onnx
import pytest
import torch

from ccc_ray.classifiers.small_cnn import SmallCNN
from ccc_ray.classifiers.weights import fingerprint
from ccc_ray.errors import CccError
from ccc_ray.export.onnx_export import check_parity, export_onnx
from ccc_ray.export.onnx_runtime import OnnxClassifier
from ccc_ray.classifiers.widen import widen_classifier

torch.set_num_threads(1)
SHAPE = (1, 8, 8)
NAMES = [f"digit {i}" for i in range(10)]


def confident_cnn(seed: int = 0) -> SmallCNN:
    """A SmallCNN whose softmax is far from flat, so the parity check compares real probabilities."""
    torch.manual_seed(seed)
    model = SmallCNN(SHAPE, 10)
    with torch.no_grad():
        model.head.weight.mul_(1000.0)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = confident_cnn()
    path = tmp_path_factory.mktemp("onnx") / "classifier.onnx"
    metadata = export_onnx(model, path, NAMES, SHAPE, ood_score="negative_energy", threshold=3.25)
    return model, path, metadata


def test_dynamic_batch_and_parity(exported):
    model, path, _ = exported
    runtime = OnnxClassifier(path, num_threads=1)
    for batch in (1, 37):
        images = torch.rand(batch, *SHAPE, generator=torch.Generator().manual_seed(batch))
        assert runtime(images).shape == (batch, 10)
        probs = model.eval()(images).softmax(1)
        assert probs.amax(1).mean() > 0.6  # a meaningful comparison, not two flat softmaxes
        assert check_parity(model, runtime, images) <= 1e-5
    batch_dim = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param == "batch" and not batch_dim.HasField("dim_value")


def test_metadata_round_trips(exported):
    model, path, metadata = exported
    assert metadata.classifier_sha256 == fingerprint(model)
    runtime = OnnxClassifier(path, num_threads=1)
    assert runtime.metadata == asdict(metadata)
    assert runtime.metadata["class_names"] == tuple(NAMES)
    assert runtime.metadata["threshold"] == 3.25 and runtime.metadata["ood_score"] == "negative_energy"
    assert runtime.image_shape == SHAPE and runtime.num_classes == 10
    props = {entry.key: entry.value for entry in onnx.load(str(path)).metadata_props}
    assert props["ccc_ray.image_shape"] == "[1, 8, 8]"


def test_parity_catches_a_model_that_computes_something_else(exported):
    _, path, _ = exported
    with pytest.raises(CccError, match="above the tolerance"):
        check_parity(confident_cnn(seed=1), path, torch.rand(4, *SHAPE))


def test_reject_class_model_exports_with_k_plus_one_outputs(tmp_path):
    widened = widen_classifier(confident_cnn(), SHAPE)
    path = tmp_path / "reject.onnx"
    metadata = export_onnx(widened, path, NAMES, SHAPE, ood_score="not_reject", reject_class=True)
    runtime = OnnxClassifier(path, num_threads=1)
    assert runtime.num_classes == 11 and metadata.num_outputs == 11
    assert runtime.metadata["reject_class"] is True and runtime.metadata["threshold"] is None
    assert check_parity(widened, runtime, torch.rand(3, *SHAPE)) <= 1e-5


def test_export_refuses_bad_metadata_and_leaves_the_old_file(tmp_path):
    path = tmp_path / "classifier.onnx"
    path.write_bytes(b"the previous export")
    model = confident_cnn()
    with pytest.raises(CccError, match="11 outputs|10 outputs"):
        export_onnx(model, path, NAMES + ["extra"], SHAPE)
    with pytest.raises(CccError, match="reject class"):
        export_onnx(model, path, NAMES, SHAPE, ood_score="not_reject")
    with pytest.raises(CccError, match="not one of"):
        export_onnx(model, path, NAMES, SHAPE, ood_score="odin")
    assert path.read_bytes() == b"the previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classifier.onnx"]


def test_export_writes_one_file_atomically_and_restores_training_mode(tmp_path):
    model = confident_cnn().train()
    export_onnx(model, tmp_path / "sub" / "model.onnx", NAMES, SHAPE)
    assert model.training
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["model.onnx"]  # no temporary file left
    onnx.checker.check_model(onnx.load(str(tmp_path / "sub" / "model.onnx")))
