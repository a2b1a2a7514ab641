import pytest
import torch

from ccc_ray.counterfeits.quality import dequantize, quantize
from ccc_ray.counterfeits.search import AttackRun, StoredImageClassifier, build_search, held_out, search_run
from ccc_ray.errors import CccError
from ccc_ray.methods import METHODS, MethodContext
from ccc_ray.methods.base import pick_real_sources
from ccc_ray.methods.real_pgd import RealPgd, RealPgdConfig

torch.set_num_threads(1)  # tiny tensors: more threads only contend with other processes

ALL = torch.arange(10)


@pytest.fixture(scope="module")
def classifier(digits_cnn):
    return digits_cnn


def pgd(config, classifier, digits, bar=0.99, real=True):
    images, labels = held_out(digits) if real else (None, None)
    return RealPgd(config, MethodContext(digits.image_shape, 10, StoredImageClassifier(classifier), "cpu", bar,
                                         images, labels))


def confidences(model, images, targets):
    with torch.no_grad():
        return torch.softmax(model(dequantize(quantize(images))), dim=1)[torch.arange(len(targets)), targets]


def test_reaches_the_target_from_real_images_of_other_classes_within_epsilon(classifier, digits):
    targets = ALL.repeat(2)
    result = pgd(RealPgdConfig(restarts=2), classifier, digits).search(targets, seed=0)
    sources = digits.test_images[pick_real_sources(digits.test_labels, targets, 0)]
    source_labels = digits.test_labels[pick_real_sources(digits.test_labels, targets, 0)]
    assert (source_labels != targets).all()
    assert result.fooled.float().mean() >= 0.8, result.confidences
    assert result.images.shape == (20, 1, 8, 8) and result.images.dtype == torch.float32
    assert result.images.min() >= 0 and result.images.max() <= 1
    # The image and the stored (uint8) image both stay within epsilon of the source.
    assert (result.images - sources).abs().max() <= 0.3 + 1e-6
    assert (dequantize(quantize(result.images)) - sources).abs().max() <= 0.3 + 1e-6
    assert (result.images - sources).abs().max() > 0.1  # it did move
    torch.testing.assert_close(confidences(classifier, result.images, targets), result.confidences)
    assert (result.confidences[result.fooled] >= 0.99).all()
    # The source was a digit of its own class: the model said so before the attack.
    assert (classifier(sources).argmax(dim=1) == source_labels).float().mean() >= 0.9


def test_each_image_stops_at_the_first_step_past_the_bar(classifier, digits):
    result = pgd(RealPgdConfig(restarts=1), classifier, digits).search(ALL, seed=0)
    steps = result.steps_to_bar
    assert result.fooled.sum() >= 5
    assert torch.equal(result.evaluations_to_bar[result.fooled], steps[result.fooled] + 1)
    slowest = int(steps.argmax())
    short = pgd(RealPgdConfig(restarts=1, steps=int(steps.max()) - 1), classifier, digits).search(ALL, seed=0)
    assert short.steps_to_bar[slowest] == -1 and short.confidences[slowest] < 0.99
    reached = (steps >= 0) & (steps < steps.max())
    assert torch.equal(short.steps_to_bar[reached], steps[reached])


def test_restarts_run_only_for_images_short_of_the_bar_and_keep_the_best(classifier, digits):
    one = pgd(RealPgdConfig(restarts=1, steps=3), classifier, digits).search(ALL, seed=0)
    three = pgd(RealPgdConfig(restarts=3, steps=3), classifier, digits).search(ALL, seed=0)
    assert (three.confidences >= one.confidences - 1e-6).all()
    assert torch.equal(three.steps_to_bar[one.fooled], one.steps_to_bar[one.fooled])
    # Every image is scored once per step until it stops, through every restart it needs.
    for result, restarts in ((one, 1), (three, 3)):
        unfooled = int((~result.fooled).sum())
        assert result.total_evaluations == int(result.evaluations_to_bar[result.fooled].sum()) + unfooled * restarts * 4


def test_same_seed_same_images_and_source_lineage(classifier, digits):
    method = pgd(RealPgdConfig(restarts=1, steps=20), classifier, digits)
    assert METHODS["real_pgd"] is RealPgd and method.uses_sources and not method.black_box
    assert RealPgd.budget_field == "restarts"
    targets = torch.tensor([2, 2, 7])
    assert torch.equal(method.sample(targets, seed=5), method.sample(targets, seed=5))
    assert not torch.equal(method.sample(targets, seed=5), method.sample(targets, seed=6))
    sampled = method.sample_with_lineage(targets, 5, digits)
    assert torch.equal(sampled.images, method.sample(targets, seed=5))
    rows = [int(source_id.removeprefix("test:")) for source_id in sampled.source_ids]
    assert torch.equal(torch.tensor(rows), pick_real_sources(digits.test_labels, targets, 5))


def test_sources_are_other_classes_picked_uniformly_by_class():
    labels = torch.tensor([0] * 50 + [1] * 5 + [2] * 5)  # class 0 dominates the rows, not the picks
    targets = torch.zeros(600, dtype=torch.int64)
    picked = labels[pick_real_sources(labels, targets, 0)]
    assert (picked != 0).all()
    assert 0.4 < float((picked == 1).double().mean()) < 0.6
    targets = torch.full((600,), 1)
    shares = torch.bincount(labels[pick_real_sources(labels, targets, 0)], minlength=3).double() / 600
    assert shares[1] == 0 and 0.4 < shares[0] < 0.6
    with pytest.raises(CccError, match="no class other than the target 0"):
        pick_real_sources(torch.zeros(4, dtype=torch.int64), torch.tensor([0]), 0)


def test_the_attack_and_the_scorecard_path_give_the_search_real_images(classifier, digits):
    method = build_search(RealPgd, RealPgdConfig(restarts=1, steps=30), classifier, 10, digits.image_shape, 0.99,
                          real=held_out(digits))
    result = search_run(method, AttackRun(0, 0, (3, 8), 11))
    sources = digits.test_images[pick_real_sources(digits.test_labels, torch.tensor([3, 8]), 11)]
    stored = torch.from_numpy(result.images).permute(0, 3, 1, 2)
    assert (dequantize(stored) - sources).abs().max() <= 0.3 + 1e-6
    with pytest.raises(CccError, match="real_pgd starts from real images of another class .* given none"):
        build_search(RealPgd, RealPgdConfig(), classifier, 10, digits.image_shape, 0.99)


def test_a_black_box_classifier_is_refused(classifier, digits, tmp_path):
    from ccc_ray.export.onnx_export import export_onnx
    from ccc_ray.export.onnx_runtime import OnnxClassifier

    export_onnx(classifier, tmp_path / "digits.onnx", [str(k) for k in range(10)], (1, 8, 8))
    with pytest.raises(CccError, match="no gradient"):
        pgd(RealPgdConfig(), OnnxClassifier(tmp_path / "digits.onnx", num_threads=1), digits)


@pytest.mark.parametrize("field, value", [("epsilon", 0.0), ("steps", -1), ("step_size", 0.0), ("restarts", 0),
                                          ("loss", "cross_entropy")])
def test_bad_config_names_the_field(classifier, digits, field, value):
    with pytest.raises(CccError, match=field):
        pgd(RealPgdConfig(**{field: value}), classifier, digits)


def test_both_real_image_attacks_have_their_config_sections():
    from ccc_ray.job import load_job
    from ccc_ray.methods.real_square import RealSquareConfig

    job = load_job(None, {"real_pgd.restarts": "3", "real_square.queries": "70"})
    assert job.method_config("real_pgd") == RealPgdConfig(restarts=3)
    assert job.method_config("real_square") == RealSquareConfig(queries=70)
