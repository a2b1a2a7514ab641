import pytest
import torch
from torch import nn

from ccc_ray.classifiers.small_cnn import SmallCNN
from ccc_ray.errors import CccError
from ccc_ray.methods.base import CounterfeitMethod, MethodContext
from ccc_ray.methods.cppn import Cppn, CppnConfig
from ccc_ray.methods.direct_encoding import DirectEncoding, DirectEncodingConfig, DirectEncodingEvolution
from ccc_ray.methods.map_elites import MapElites, MapElitesConfig

torch.set_num_threads(1)  # tiny tensors: more threads only contend with other processes

SHAPE = (1, 8, 8)
BUDGET = MapElitesConfig(population_size=200, max_generations=300)  # the paper's MNIST population


@pytest.fixture(scope="module")
def classifier(digits_cnn):
    """The session's SmallCNN trained for 10 epochs on digits (tests/conftest.py)."""
    return digits_cnn


def first_pixels(images: torch.Tensor) -> torch.Tensor:
    """A stand-in classifier for 1 x 4 x 4 images: the logit of class k is 10 x pixel k (10 classes)."""
    return images.flatten(1)[:, :10] * 10


def probabilities(model, images):
    with torch.no_grad():
        return torch.softmax(model(images), dim=1)


@pytest.mark.parametrize("make", [lambda: DirectEncoding(DirectEncodingConfig(), SHAPE),
                                  lambda: Cppn(CppnConfig(), SHAPE)], ids=["direct", "cppn"])
def test_fools_all_ten_digit_classes_within_a_modest_budget(classifier, make):
    encoding = make()
    result = MapElites(BUDGET, encoding).run(classifier, 10, seed=0)
    assert result.fooled.all(), result.generations_to_threshold
    assert (result.confidences >= 0.99).all()
    assert result.generations == int(result.generations_to_threshold.max()) < BUDGET.max_generations
    assert result.images.shape == (10, *SHAPE) and result.images.min() >= 0 and result.images.max() <= 1
    # The confidences are the classifier's on the champions as rendered.
    scored = probabilities(classifier, result.images)
    torch.testing.assert_close(scored[torch.arange(10), torch.arange(10)], result.confidences)
    # Evaluations: the initial population plus one population per generation.
    assert result.evaluations == BUDGET.population_size * (result.generations + 1)
    assert torch.equal(result.evaluations_to_threshold, BUDGET.population_size * (result.generations_to_threshold + 1))
    assert result.history.shape == (result.generations + 1, 10)
    assert (result.history.diff(dim=0) >= 0).all()  # a champion is only ever replaced by a better one


def test_offspring_replace_only_the_champions_they_beat():
    search = MapElites(MapElitesConfig(population_size=16, max_generations=50),
                       DirectEncoding(DirectEncodingConfig(mutation_rate=0.5), (1, 4, 4)))
    state = search.start(first_pixels, 10, seed=0)
    for _ in range(20):
        before_genomes, before = state.genomes.clone(), state.confidences.clone()
        search.step(state, first_pixels)
        improved = state.confidences > before
        assert (state.confidences >= before).all()
        assert torch.equal(state.genomes[~improved], before_genomes[~improved])
        assert not torch.equal(state.genomes[improved], before_genomes[improved]) or not improved.any()
        probs = torch.softmax(first_pixels(state.genomes), dim=1)
        torch.testing.assert_close(probs[torch.arange(10), torch.arange(10)], state.confidences)
    # Unbeatable champions stay; champions anyone beats are all replaced, by any offspring, in one step.
    state.confidences[:5] = 1.0
    state.confidences[5:] = 0.0
    kept = state.genomes[:5].clone()
    search.step(state, first_pixels)
    assert torch.equal(state.genomes[:5], kept) and (state.confidences[:5] == 1.0).all()
    assert (state.confidences[5:] > 0).all()


def test_one_offspring_can_take_several_classes():
    search = MapElites(MapElitesConfig(population_size=4, max_generations=1),
                       DirectEncoding(DirectEncodingConfig(), (1, 4, 4)))
    state = search.start(first_pixels, 10, seed=0)
    state.confidences[:] = 0.0
    search.encoding.mutate = lambda parents, generation, generator: torch.ones_like(parents)  # four equal images
    search.step(state, first_pixels)
    assert (state.genomes == 1).all()  # the same image now holds every class
    torch.testing.assert_close(state.confidences, torch.full((10,), 0.1))


def test_threshold_bookkeeping_and_stopping():
    config = MapElitesConfig(population_size=20, max_generations=500, threshold=0.9)
    result = MapElites(config, DirectEncoding(DirectEncodingConfig(), (1, 4, 4))).run(first_pixels, 10, seed=1)
    assert result.fooled.all() and result.generations == int(result.generations_to_threshold.max())
    for k in range(10):
        first = int(torch.nonzero(result.history[:, k] >= 0.9)[0])
        assert result.generations_to_threshold[k] == first
    # Without stopping it runs to max_generations; with stop classes it stops once they are fooled.
    longer = MapElites(MapElitesConfig(population_size=20, max_generations=result.generations + 5, threshold=0.9,
                                       stop_at_threshold=False), DirectEncoding(DirectEncodingConfig(), (1, 4, 4)))
    assert longer.run(first_pixels, 10, seed=1).generations == result.generations + 5
    easiest = int(result.generations_to_threshold.argmin())
    early = MapElites(config, DirectEncoding(DirectEncodingConfig(), (1, 4, 4))).run(
        first_pixels, 10, seed=1, stop_classes=torch.tensor([easiest]))
    assert early.generations == int(result.generations_to_threshold.min())


@pytest.mark.parametrize("make", [lambda: DirectEncoding(DirectEncodingConfig(), SHAPE),
                                  lambda: Cppn(CppnConfig(), SHAPE)], ids=["direct", "cppn"])
def test_same_seed_same_run(classifier, make):
    config = MapElitesConfig(population_size=50, max_generations=8, stop_at_threshold=False)
    first, second, other = (MapElites(config, make()).run(classifier, 10, seed) for seed in (3, 3, 4))
    assert torch.equal(first.images, second.images) and torch.equal(first.history, second.history)
    assert torch.equal(first.generations_to_threshold, second.generations_to_threshold)
    assert not torch.equal(first.images, other.images)


def test_runs_black_box_on_an_onnx_classifier(classifier, tmp_path):
    from ccc_ray.export.onnx_export import export_onnx
    from ccc_ray.export.onnx_runtime import OnnxClassifier

    export_onnx(classifier, tmp_path / "digits.onnx", [str(k) for k in range(10)], SHAPE)
    session = OnnxClassifier(tmp_path / "digits.onnx", num_threads=1)
    result = MapElites(BUDGET, DirectEncoding(DirectEncodingConfig(), SHAPE)).run(session, 10, seed=0)
    assert result.fooled.all()
    torch.testing.assert_close(probabilities(classifier, result.images)[torch.arange(10), torch.arange(10)],
                               result.confidences, atol=1e-4, rtol=1e-4)
    with pytest.raises(CccError, match="shape"):
        MapElites(BUDGET, DirectEncoding(DirectEncodingConfig(), (1, 6, 6))).run(session, 10, seed=0)


def test_sample_gives_one_counterfeit_per_target_from_independent_runs(classifier):
    method = evolution(classifier)
    assert isinstance(method, CounterfeitMethod) and method.name == "direct_encoding"
    targets = torch.tensor([3, 8, 3])
    images = method.sample(targets, seed=0)
    assert images.shape == (3, *SHAPE)
    assert (probabilities(classifier, images)[torch.arange(3), targets] >= 0.99).all()
    assert not torch.equal(images[0], images[2])  # the second 3 comes from another run
    assert torch.equal(images, method.sample(targets, seed=0))
    assert method.sample(torch.tensor([], dtype=torch.int64), seed=0).shape == (0, *SHAPE)


def test_a_classifier_in_training_mode_is_scored_in_eval_mode_and_left_as_it_was(classifier):
    classifier.train()
    try:
        config = MapElitesConfig(population_size=20, max_generations=3, stop_at_threshold=False)
        result = MapElites(config, DirectEncoding(DirectEncodingConfig(), SHAPE)).run(classifier, 10, seed=0)
        assert classifier.training
    finally:
        classifier.eval()
    scored = probabilities(classifier, result.images)  # dropout off: the same numbers again
    torch.testing.assert_close(scored[torch.arange(10), torch.arange(10)], result.confidences)


def evolution(classifier, shape=SHAPE):
    """The direct-encoding method with the test budget."""
    config = DirectEncodingConfig(population_size=BUDGET.population_size, max_generations=BUDGET.max_generations)
    return DirectEncodingEvolution(config, MethodContext(shape, 10, classifier, "cpu", BUDGET.threshold))


@pytest.mark.parametrize("field, value", [("population_size", 1), ("max_generations", -1),
                                          ("threshold", 0.0), ("threshold", 1.5)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(CccError, match=field):
        MapElites(MapElitesConfig(**{field: value}), DirectEncoding(DirectEncodingConfig(), SHAPE))


def test_a_classifier_that_does_not_fit_is_refused(classifier):
    search = MapElites(MapElitesConfig(), DirectEncoding(DirectEncodingConfig(), SHAPE))
    with pytest.raises(CccError, match="outputs 10 classes, expected num_classes=4"):
        search.run(classifier, 4, seed=0)
    with pytest.raises(CccError, match="does not accept images of shape 1x8x8"):
        search.run(SmallCNN((3, 8, 8), 10).eval(), 10, seed=0)
    with pytest.raises(CccError, match="N x K logits"):
        search.run(lambda images: images.mean(), 10, seed=0)
    with pytest.raises(CccError, match="num_classes"):
        search.run(classifier, 0, seed=0)
    with pytest.raises(CccError, match="does not accept"):
        evolution(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), (1, 16, 16)).search(torch.tensor([0]), 0)


@pytest.mark.parametrize("targets, message", [(torch.tensor([0, 10]), "target class 10 is out of range"),
                                              (torch.tensor([-1]), "target class -1 is out of range"),
                                              (torch.tensor([1.0]), "class indices")])
def test_bad_targets_are_refused(classifier, targets, message):
    method = evolution(classifier)
    with pytest.raises(CccError, match=message):
        method.sample(targets, seed=0)
