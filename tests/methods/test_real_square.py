import pytest
import torch

from ccc_ray.counterfeits.quality import dequantize, quantize
from ccc_ray.counterfeits.search import StoredImageClassifier, held_out
from ccc_ray.errors import CccError
from ccc_ray.methods import METHODS, MethodContext
from ccc_ray.methods.base import pick_real_sources
from ccc_ray.methods.real_square import RealSquare, RealSquareConfig, square_share

torch.set_num_threads(1)  # tiny tensors: more threads only contend with other processes

ALL = torch.arange(10)


@pytest.fixture(scope="module")
def classifier(digits_cnn):
    return digits_cnn


class NoGradient:
    """A black box: logits only, detached, as an ONNX session gives them."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, images):
        self.calls += 1
        with torch.no_grad():
            return self.model(images).detach()


def square(config, classifier, digits, bar=0.99):
    return RealSquare(config, MethodContext(digits.image_shape, 10, StoredImageClassifier(classifier), "cpu", bar,
                                            *held_out(digits)))


def test_reaches_the_target_from_real_images_without_a_gradient_within_epsilon(classifier, digits):
    targets = ALL.repeat(2)
    black_box = NoGradient(classifier)
    result = square(RealSquareConfig(), black_box, digits).search(targets, seed=0)
    rows = pick_real_sources(digits.test_labels, targets, 0)
    sources, source_labels = digits.test_images[rows], digits.test_labels[rows]
    assert (source_labels != targets).all()
    assert result.fooled.float().mean() >= 0.8, result.confidences
    assert result.images.min() >= 0 and result.images.max() <= 1
    assert (result.images - sources).abs().max() <= 0.3 + 1e-6
    assert torch.equal(dequantize(quantize(result.images)), result.images)  # proposals are uint8 levels
    with torch.no_grad():
        rescored = torch.softmax(classifier(result.images), dim=1)[torch.arange(20), targets]
    torch.testing.assert_close(rescored, result.confidences)
    # One batched call per iteration scores every image still running (plus the start and the shape probe).
    assert black_box.calls <= RealSquareConfig().queries + 1
    assert (result.evaluations_to_bar[result.fooled] <= RealSquareConfig().queries).all()
    unfooled = int((~result.fooled).sum())
    assert result.total_evaluations == int(result.evaluations_to_bar[result.fooled].sum()) \
        + unfooled * RealSquareConfig().queries


def test_stops_each_image_at_the_bar_and_a_larger_budget_only_adds(classifier, digits):
    small = square(RealSquareConfig(queries=50), classifier, digits).search(ALL, seed=1)
    large = square(RealSquareConfig(queries=400), classifier, digits).search(ALL, seed=1)
    assert large.fooled.sum() >= small.fooled.sum()
    assert (large.confidences[~large.fooled] < 0.99).all()
    assert (large.confidences >= small.confidences - 1e-6).all() or large.fooled.all()


def test_same_seed_same_images(classifier, digits):
    method = square(RealSquareConfig(queries=100), classifier, digits)
    assert METHODS["real_square"] is RealSquare and method.black_box and method.uses_sources
    assert RealSquare.budget_field == "queries"
    targets = torch.tensor([2, 2, 7])
    assert torch.equal(method.sample(targets, seed=5), method.sample(targets, seed=5))
    assert not torch.equal(method.sample(targets, seed=5), method.sample(targets, seed=6))


def test_an_onnx_session_is_attacked(classifier, digits, tmp_path):
    from ccc_ray.export.onnx_export import export_onnx
    from ccc_ray.export.onnx_runtime import OnnxClassifier

    export_onnx(classifier, tmp_path / "digits.onnx", [str(k) for k in range(10)], (1, 8, 8))
    session = OnnxClassifier(tmp_path / "digits.onnx", num_threads=1)
    onnx_images = square(RealSquareConfig(queries=100), session, digits).sample(ALL, seed=3)
    torch_images = square(RealSquareConfig(queries=100), classifier, digits).sample(ALL, seed=3)
    assert (onnx_images == torch_images).float().mean() > 0.9  # same search, up to float differences


def test_the_square_shrinks_on_the_papers_schedule():
    assert square_share(0.8, 0, 10_000) == 0.8
    assert square_share(0.8, 11, 10_000) == 0.4
    assert square_share(0.8, 9_999, 10_000) == pytest.approx(0.8 / 512)
    assert square_share(0.8, 100, 1_000) == square_share(0.8, 1_000, 10_000)  # rescaled to the budget


def test_no_real_images_is_refused(classifier, digits):
    with pytest.raises(CccError, match="real_square starts from real images of another class .* given none"):
        RealSquare(RealSquareConfig(), MethodContext(digits.image_shape, 10, classifier, "cpu", 0.99))


@pytest.mark.parametrize("field, value", [("epsilon", 0.001), ("queries", 0), ("p_init", 0.0), ("p_init", 1.5),
                                          ("loss", "log_probability")])
def test_bad_config_names_the_field(classifier, digits, field, value):
    with pytest.raises(CccError, match=field):
        square(RealSquareConfig(**{field: value}), classifier, digits)
