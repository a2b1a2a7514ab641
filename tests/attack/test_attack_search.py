"""The attack's core without Ray: runs, stored-image scoring, and the black-box path (ONNX = torch)."""

from __future__ import annotations

import pytest
import torch

from ccc_ray.counterfeits.search import (
    AttackRun,
    StoredImageClassifier,
    build_search,
    load_target,
    plan_runs,
    search_run,
)
from ccc_ray.classifiers.weights import load_classifier
from ccc_ray.export.onnx_export import export_onnx
from ccc_ray.methods import METHODS
from ccc_ray.counterfeits.quality import dequantize, quantize

torch.set_num_threads(1)


def run_search(method, classifier_fn, num_outputs, image_shape, run, confidence_bar=0.99, **settings):
    """One run of the registered search `method` as an attack actor does it."""
    cls = METHODS[method]
    search = build_search(cls, cls.config_class(**settings), classifier_fn, num_outputs, image_shape, confidence_bar)
    return search_run(search, run)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory, digits_classifier_file):
    model, info = load_classifier(digits_classifier_file)
    path = tmp_path_factory.mktemp("onnx") / "classifier.onnx"
    export_onnx(model, path, list(info.class_names), info.image_shape)
    return path


def test_runs_cover_every_class_per_class_times_with_their_own_seeds():
    runs = plan_runs([0, 1, 2, 3, 4, 5, 6], per_class=3, class_groups=2, seed=5)
    assert [run.classes for run in runs[:2]] == [(0, 1, 2, 3), (4, 5, 6)]
    for target in range(7):
        assert sorted(run.repetition for run in runs if target in run.classes) == [0, 1, 2]
    assert len({run.seed for run in runs}) == len(runs) == 6
    assert plan_runs([0, 1, 2, 3, 4, 5, 6], 3, 2, 5) == runs  # same seed, same plan
    assert len(plan_runs([4], per_class=1, class_groups=5, seed=0)) == 1  # never an empty group


def test_the_stored_image_is_what_gets_scored_and_gradients_pass_through(digits_classifier_file):
    model, _ = load_classifier(digits_classifier_file)
    images = torch.rand(4, 1, 8, 8, requires_grad=True)
    logits = StoredImageClassifier(model)(images)
    torch.testing.assert_close(logits, model(dequantize(quantize(images.detach()))))
    logits[:, 3].sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_the_attacked_torch_model_runs_channels_last_frozen_and_scores_as_before(digits, digits_classifier_file):
    reference, _ = load_classifier(digits_classifier_file)
    _, model = load_target(digits_classifier_file, None, digits, "direct_encoding")
    convolutions = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convolutions and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convolutions)
    assert not all(m.weight.is_contiguous() for m in convolutions)  # (one input channel fits both layouts)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    images = torch.rand(64, *digits.image_shape)
    with torch.no_grad():
        torch.testing.assert_close(torch.softmax(model(images), 1), torch.softmax(reference.eval()(images), 1),
                                   atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", ["direct_encoding", "cppn"])
def test_onnx_gives_the_champions_torch_gives(digits, digits_classifier_file, onnx_file, method):
    """The black-box path: the same run against the ONNX export finds the same champions. ONNX Runtime and torch
    agree to ~1e-5, so a selection between two candidates that close may go either way and that class's
    lineage diverge (seen on one CPU for 1 class of 10); the rest must be the very same images."""
    settings = {"population_size": 100, "max_generations": 60}
    run = AttackRun(0, 0, tuple(range(10)), seed=11)
    torch_target, torch_fn = load_target(digits_classifier_file, None, digits, method)
    onnx_target, onnx_fn = load_target(digits_classifier_file, str(onnx_file), digits, method)
    assert onnx_target.kind == "onnx" and onnx_target.sha256 == torch_target.sha256  # fingerprint from metadata
    # torch mutates between the session's calls: its idle threads must not busy-wait on those cores
    assert onnx_fn.session.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"
    by_torch = run_search(method, torch_fn, 10, digits.image_shape, run, **settings)
    by_onnx = run_search(method, onnx_fn, 10, digits.image_shape, run, **settings)
    same = (by_onnx.images == by_torch.images).reshape(10, -1).all(1)
    assert same.sum() >= 9, same
    assert abs(by_onnx.confidences - by_torch.confidences)[same].max() <= 1e-5
    assert abs(by_onnx.confidences - by_torch.confidences).max() <= 1e-3
    assert ((by_onnx.generations >= 0) == (by_torch.generations >= 0)).all()  # the same classes fooled
    assert (by_onnx.generations == by_torch.generations)[same].all()
    # The confidences are those of the stored uint8 images.
    stored = dequantize(torch.from_numpy(by_torch.images).permute(0, 3, 1, 2))
    with torch.no_grad():
        scored = torch.softmax(torch_fn(stored), 1)[torch.arange(10), torch.arange(10)]
    torch.testing.assert_close(scored, torch.from_numpy(by_torch.confidences))


def test_gradient_ascent_reaches_the_threshold_on_the_stored_image(digits, digits_classifier_file):
    _, model = load_target(digits_classifier_file, None, digits, "gradient_ascent")
    result = run_search("gradient_ascent", model, 10, digits.image_shape, AttackRun(0, 0, (2, 7), seed=3))
    assert (result.generations >= 0).all() and (result.confidences >= 0.99).all()
    stored = dequantize(torch.from_numpy(result.images).permute(0, 3, 1, 2))
    with torch.no_grad():
        scored = torch.softmax(model(stored), 1)[[0, 1], [2, 7]]
    assert (scored >= 0.99).all()


def test_a_reject_class_model_is_attacked_on_its_real_classes(digits, digits_classifier_file, tmp_path):
    """A hardened model has K + 1 outputs; the confidence of a class is its softmax over all of them."""
    from ccc_ray.classifiers.weights import save_classifier
    from ccc_ray.classifiers.widen import widen_classifier

    model, info = load_classifier(digits_classifier_file)
    widened = widen_classifier(model, info.image_shape)
    path = tmp_path / "hardened.safetensors"
    save_classifier(path, widened, info.config, info.image_shape, list(info.class_names), "digits", reject_class=True)
    target, fn = load_target(path, None, digits, "direct_encoding")
    assert target.num_outputs == 11 and target.reject_class
    result = run_search("direct_encoding", fn, target.num_outputs, digits.image_shape, AttackRun(0, 0, (0, 9), seed=1),
                        confidence_bar=0.5, population_size=50, max_generations=5)
    assert result.images.shape == (2, 8, 8, 1) and result.images.dtype.name == "uint8"
    stored = dequantize(torch.from_numpy(result.images).permute(0, 3, 1, 2))
    with torch.no_grad():
        scored = torch.softmax(widened(stored), 1)[[0, 1], [0, 9]]  # softmax over all 11 outputs
    torch.testing.assert_close(scored, torch.from_numpy(result.confidences))
