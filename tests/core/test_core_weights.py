"""ccc_ray/classifiers/weights.py: classifier files round trip, and no file can run code or pass corrupted."""

import io
import os
import pickle
import shlex

import pytest
import torch
from safetensors.torch import save as save_safetensors

from ccc_ray.classifiers.build import ClassifierConfig, build_classifier
from ccc_ray.classifiers.weights import (fingerprint, load_classifier, load_initial_weights, load_weights_into,
                                         read_state_dict, save_classifier)
from ccc_ray.errors import CccError

torch.set_num_threads(1)

CONFIG = ClassifierConfig(width=4, hidden=16)
SHAPE = (1, 8, 8)
NAMES = ["zero", "one", "two"]


def small_model(seed=0, config=CONFIG):
    torch.manual_seed(seed)
    return build_classifier(config, SHAPE, len(NAMES)).eval()


@pytest.fixture
def saved(tmp_path):
    model = small_model()
    path = tmp_path / "classifier.safetensors"
    info = save_classifier(path, model, CONFIG, SHAPE, NAMES, "digits")
    return path, model, info


def test_round_trip_keeps_fingerprint_and_outputs(saved):
    path, model, info = saved
    assert info.sha256 == fingerprint(model) and len(info.sha256) == 64
    loaded, loaded_info = load_classifier(path, SHAPE, len(NAMES))
    assert loaded_info.sha256 == info.sha256
    assert loaded_info.config == CONFIG
    assert loaded_info.image_shape == SHAPE and loaded_info.class_names == tuple(NAMES)
    assert loaded_info.data_name == "digits" and loaded_info.num_classes == 3
    assert not loaded.training
    images = torch.rand(5, *SHAPE)
    assert torch.equal(loaded(images), model(images))
    # A differently initialised model has another fingerprint, so equality above means something.
    assert fingerprint(small_model(seed=1)) != info.sha256
    assert not list(path.parent.glob(".*.tmp"))  # the atomic write left no temporary file


def test_round_trip_of_a_model_with_batchnorm(tmp_path):
    # BatchNorm keeps a 0-dim `num_batches_tracked` tensor, which the fingerprint must handle.
    config = ClassifierConfig(arch="resnet18")
    torch.manual_seed(0)
    model = build_classifier(config, (1, 16, 16), 3).eval()
    info = save_classifier(tmp_path / "r18.safetensors", model, config, (1, 16, 16), NAMES, "x")
    loaded, loaded_info = load_classifier(tmp_path / "r18.safetensors")
    assert loaded_info.sha256 == info.sha256
    images = torch.rand(2, 1, 16, 16)
    assert torch.equal(loaded(images), model(images))


class Payload:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


def malicious_bytes(kind, marker):
    if kind == "torch.save":
        buffer = io.BytesIO()
        torch.save({"weight": torch.zeros(1), "evil": Payload(marker)}, buffer)
        return buffer.getvalue()
    return pickle.dumps({"weight": torch.zeros(1), "evil": Payload(marker)}, protocol=2)


@pytest.mark.parametrize("kind", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused_without_running(tmp_path, kind):
    # Prove the payload is live: plain unpickling does create a marker.
    control = tmp_path / "control-marker"
    pickle.loads(malicious_bytes("pickle", control))
    assert control.exists()

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    evil.write_bytes(malicious_bytes(kind, marker))
    with pytest.raises(CccError, match="evil.pt' is not a plain tensor state dict"):
        read_state_dict(evil)
    with pytest.raises(CccError):
        load_classifier(evil)
    model = small_model()
    with pytest.raises(CccError, match="not a plain tensor state dict"):
        load_initial_weights(model, ClassifierConfig(width=4, hidden=16, weights=str(evil)), SHAPE, 3)
    assert not marker.exists()


def test_plain_pt_state_dict_is_accepted_as_initial_weights(tmp_path):
    source = small_model(seed=3)
    path = tmp_path / "start.pt"
    torch.save(source.state_dict(), path)
    state, metadata = read_state_dict(path)
    assert metadata == {} and set(state) == set(source.state_dict())
    target = small_model(seed=4)
    config = ClassifierConfig(width=4, hidden=16, weights=str(path))
    load_initial_weights(target, config, SHAPE, 3)
    assert fingerprint(target) == fingerprint(source)


def test_pt_file_holding_other_than_tensors_is_refused(tmp_path):
    path = tmp_path / "list.pt"
    torch.save({"weight": [1, 2, 3]}, path)
    with pytest.raises(CccError, match="must hold a dict of tensors"):
        read_state_dict(path)


def test_corrupted_safetensors_are_refused(saved, tmp_path):
    path, _, _ = saved
    raw = path.read_bytes()
    cases = {
        "garbage": b"this is not a safetensors file at all",
        "truncated": raw[:-40],
        "huge-header": (10**12).to_bytes(8, "little") + raw[8:],
    }
    for name, data in cases.items():
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(data)
        with pytest.raises(CccError, match="corrupted or not safetensors"):
            load_classifier(bad)
        with pytest.raises(CccError, match="corrupted or not safetensors"):
            read_state_dict(bad)


def test_flipped_weight_byte_fails_the_fingerprint(saved, tmp_path):
    path, _, _ = saved
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF  # inside the last tensor's data; the header stays valid
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(raw))
    with pytest.raises(CccError, match="does not match its recorded fingerprint"):
        load_classifier(bad)


def test_file_without_classifier_metadata_is_refused(tmp_path):
    path = tmp_path / "bare.safetensors"
    path.write_bytes(save_safetensors(small_model().state_dict()))
    with pytest.raises(CccError, match="has no ccc-ray classifier metadata"):
        load_classifier(path)
    with pytest.raises(CccError, match="does not exist"):
        load_classifier(tmp_path / "missing.safetensors")


def test_shape_and_class_mismatch_are_named(saved):
    path, _, _ = saved
    with pytest.raises(CccError, match="expects images of shape 1x8x8, the data has 3x8x8"):
        load_classifier(path, image_shape=(3, 8, 8))
    with pytest.raises(CccError, match="has 3 classes, the data has 10"):
        load_classifier(path, num_classes=10)


def test_weights_of_another_architecture_do_not_fit():
    wide = small_model(config=ClassifierConfig(width=8, hidden=16))
    with pytest.raises(CccError, match="do not fit the model"):
        load_weights_into(small_model(), wide.state_dict(), "wide.safetensors")
