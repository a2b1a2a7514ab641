import io
import math

import numpy as np
import pytest
import torch
from torch import nn

from ccc_ray.classifiers.small_cnn import SmallCNN
from ccc_ray.config import validate_config
from ccc_ray.errors import CccError
from ccc_ray.methods import METHODS, MethodContext
from ccc_ray.methods.substrate_gan import (
    SubstrateGan,
    SubstrateGanConfig,
    category_loss,
    classifier_loss,
    confidence_margin,
    margin_positive_loss,
    mask_loss,
    paper_classifier_loss,
    substrate_loss,
    tiled_class_input,
    unet_depth,
)

torch.set_num_threads(1)  # tiny tensors: more threads only contend with other processes

SHAPE = (1, 8, 8)
TINY = dict(base_channels=8, batch_size=4, substrate_count=16)


@pytest.fixture(scope="module")
def classifier():
    """An untrained SmallCNN in eval mode: the losses and the loop need a classifier, not a good one."""
    torch.manual_seed(0)
    return SmallCNN(SHAPE, 10, width=8, hidden=32).eval().requires_grad_(False)


def build(classifier, shape=SHAPE, **overrides) -> SubstrateGan:
    config = SubstrateGanConfig(**{**TINY, **overrides})
    validate_config(config)
    return SubstrateGan(config, MethodContext(shape, 10, classifier))


def train(method: SubstrateGan, steps: int) -> list[dict]:
    """The loop orchestration runs: a DataLoader over `training_data`, one `training_step` per batch."""
    loader = torch.utils.data.DataLoader(method.training_data(None), batch_size=method.config.batch_size,
                                         shuffle=True, generator=torch.Generator().manual_seed(0))
    losses = []
    for step, batch in zip(range(steps), loader):
        losses.append(method.training_step(batch, torch.Generator().manual_seed(step), len(batch[0])))
    return losses


def parameters(method: SubstrateGan) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": value.clone() for name, module in method.modules().items()
            for key, value in module.state_dict().items()}


def test_registered_with_the_paper_settings():
    assert METHODS["substrate_gan"] is SubstrateGan
    assert SubstrateGan.kind == "generator" and SubstrateGan.uses_sources
    config = SubstrateGanConfig()
    assert (config.gan_weight, config.mask_weight, config.substrate_weight) == (3, 10, 150)
    assert (config.beta1, config.crops, config.tile_size, config.max_active_classes) == (0.5, 3, 8, 3)
    paper = SubstrateGanConfig.paper_512([1, 2, 3, 4, 5])
    assert (paper.gan_weight, paper.mask_weight, paper.classifier_weight, paper.substrate_weight) == (3, 10, 50, 150)
    assert (paper.learning_rate, paper.beta1, paper.output_size, paper.batch_size, paper.steps) == \
        (2e-4, 0.5, 512, 3, 200_000)
    assert (paper.classifier_loss, paper.learning_rate_decay) == ("paper", 0)
    assert config.classifier_loss == "margin"  # ours at the default size, see docs/BENCHMARKS.md issue 15


def test_the_shipped_paper_config_gives_the_paper_training_settings():
    from pathlib import Path

    from ccc_ray.job import JobConfig, load_job

    job = load_job(Path(__file__).resolve().parents[2] / "configs" / "substrate_gan_paper.yaml")
    config = job.method_config("substrate_gan")
    paper = SubstrateGanConfig.paper_512([0])
    for name in ("classifier_loss", "gan_weight", "mask_weight", "classifier_weight", "substrate_weight",
                 "learning_rate", "beta1", "learning_rate_decay"):
        assert getattr(config, name) == getattr(paper, name), name
    assert config.steps == SubstrateGanConfig().steps  # only the paper's training settings, not its 512 px size
    assert JobConfig().method_config("substrate_gan").classifier_loss == "margin"


@pytest.mark.parametrize("side, depth", [(512, 6), (32, 2), (28, 2), (8, 2), (4, 1)])
def test_depth_comes_from_the_image_size(side, depth):
    assert unet_depth(side, side, 8) == depth


@pytest.mark.parametrize("shape, every_level", [((1, 8, 8), False), ((3, 28, 28), False), ((3, 12, 20), False),
                                                ((3, 32, 32), True)])
def test_generator_keeps_the_shape_and_the_tanh_range(classifier, shape, every_level):
    config = SubstrateGanConfig(**TINY, class_input_every_level=every_level)
    method = SubstrateGan(config, MethodContext(shape, 10, nn.Identity()))
    tile = tiled_class_input(torch.eye(10)[:2], method.tile_hw, torch.Generator().manual_seed(0))
    output = method.generator(torch.rand(2, *shape) * 2 - 1, tile)
    assert output.shape == (2, *shape) and output.abs().max() <= 1


def test_tiled_class_input_is_zero_when_inactive_and_the_paper_mixture_when_active():
    active = torch.zeros(2000, 4)
    active[:, 1] = 1
    active[:1000, 3] = 1
    tile = tiled_class_input(active, (8, 8), torch.Generator().manual_seed(0))
    assert tile.shape == (2000, 4, 8, 8)
    assert torch.all(tile[:, 0] == 0) and torch.all(tile[:, 2] == 0) and torch.all(tile[1000:, 3] == 0)
    values = torch.cat([tile[:, 1].flatten(), tile[:1000, 3].flatten()])
    # N(1, 2) and N(-1, 2) in equal parts: mean 0, variance 1 + 2 = 3, symmetric.
    assert abs(float(values.mean())) < 0.02
    assert abs(float(values.var()) - 3.0) < 0.05
    assert abs(float((values > 0).float().mean()) - 0.5) < 0.01
    again = tiled_class_input(active, (8, 8), torch.Generator().manual_seed(0))
    assert torch.equal(tile, again)


def test_training_samples_have_one_to_three_classes_and_some_none(classifier):
    method = build(classifier, no_class_share=0.1, multi_class_share=0.2)
    active = method.draw_active(20000, torch.Generator().manual_seed(0))
    sizes = active.sum(1)
    assert sizes.max() == 3
    assert abs(float((sizes == 0).float().mean()) - 0.1) < 0.01
    assert abs(float((sizes == 1).float().mean()) - 0.7) < 0.015
    assert abs(float((sizes >= 2).float().mean()) - 0.2) < 0.015
    per_class = active[sizes == 1].sum(0) / (sizes == 1).sum()
    assert torch.allclose(per_class, torch.full((10,), 0.1), atol=0.01)


def test_category_and_classifier_losses_on_known_inputs():
    assert float(category_loss(torch.tensor([0.0, 0.5]))) == pytest.approx((0.5 + math.log(2)) / 2)
    whole = torch.tensor([[0.9, 0.1]])
    crops = torch.tensor([[[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]]])
    positive, negative = classifier_loss(whole, crops, torch.tensor([[1.0, 0.0]]))
    # Positive: only the active class, on the whole image; negative: the worst crop's inactive classes.
    assert float(positive) == pytest.approx((0.1 - math.log(0.9)) / 2)
    assert float(negative) == pytest.approx((0.8 - math.log(0.2)) / 2)
    positive, negative = classifier_loss(whole, crops, torch.zeros(1, 2))
    assert float(positive) == 0
    assert float(negative) == pytest.approx(max((0.9 + 0.1 - math.log(0.1 * 0.9)) / 2,
                                                (1.0 - 2 * math.log(0.5)) / 2, (1.0 - math.log(0.8 * 0.2)) / 2))


def test_the_paper_loss_from_logits_matches_the_probability_form_and_keeps_a_gradient():
    torch.manual_seed(0)
    classes = [1, 4, 6]  # painted classes among K = 8 outputs: the softmax runs over all 8
    logits = torch.randn(5, 8) * 2
    crop_logits = torch.randn(5, 3, 8) * 2
    active = torch.tensor([[1.0, 0, 0], [0, 1, 1], [0, 0, 0], [1, 1, 1], [0, 0, 1]])
    expected = classifier_loss(torch.softmax(logits, 1)[:, classes], torch.softmax(crop_logits, 2)[..., classes],
                               active)
    got = paper_classifier_loss(torch.log_softmax(logits, 1), torch.log_softmax(crop_logits, 2), active, classes)
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, atol=1e-5)
    # An active class far below the others: p underflows in float32, so the probability form's clamp gives no
    # gradient at all; the logit form pulls with -log p's full gradient of about 1 per logit.
    far = torch.tensor([[-200.0, 0, 0, 0]], requires_grad=True)
    positive, _ = paper_classifier_loss(torch.log_softmax(far, 1), torch.log_softmax(far, 1)[:, None],
                                        torch.tensor([[1.0]]), [0])
    positive.sum().backward()
    assert float(far.grad[0, 0]) == pytest.approx(-1.0, abs=1e-4)
    clamped = far.detach().clone().requires_grad_(True)
    old_positive, _ = classifier_loss(torch.softmax(clamped, 1)[:, :1], torch.softmax(clamped, 1)[:, None, :1],
                                      torch.tensor([[1.0]]))
    old_positive.sum().backward()
    assert float(clamped.grad.abs().max()) == 0


def test_the_margin_loss_stops_at_its_confidence_and_pulls_evenly_below_it():
    margin = confidence_margin(0.999)
    assert margin == pytest.approx(math.log(999))
    classes = list(range(4))
    one = torch.tensor([[1.0, 0, 0, 0]])

    def loss_and_grad(target_probability):
        # Class 0 at the given softmax probability, the rest shared evenly by the other three.
        rest = (1 - target_probability) / 3
        logits = torch.log(torch.tensor([[target_probability, rest, rest, rest]])).requires_grad_(True)
        loss = margin_positive_loss(logits, one, classes, margin)
        loss.sum().backward()
        return float(loss.detach()), logits.grad[0, 0].item()

    assert loss_and_grad(0.9995) == (0.0, 0.0)
    low, low_grad = loss_and_grad(0.5)
    high, high_grad = loss_and_grad(0.99)
    assert low == pytest.approx((margin - 0.0) / 4, abs=1e-5)  # (1/n) (margin - log(p / (1 - p)))
    assert high == pytest.approx((margin - math.log(99)) / 4, abs=1e-4)
    assert low_grad == pytest.approx(-0.25) and high_grad == pytest.approx(-0.25)  # no fading near the bar
    # Several active classes: each against the inactive outputs only, not against each other.
    two = torch.tensor([[1.0, 1, 0, 0]])
    logits = torch.tensor([[3.0, 3.0, -1.0, -1.0]])
    assert float(margin_positive_loss(logits, two, classes, margin)) == pytest.approx(
        2 * (margin - (4 - math.log(2))) / 4, abs=1e-4)
    # No active class: nothing; every output active: no rival, a zero loss with a finite gradient.
    assert float(margin_positive_loss(logits, torch.zeros(1, 4), classes, margin)) == 0
    every = logits.clone().requires_grad_(True)
    loss = margin_positive_loss(every, torch.ones(1, 4), classes, margin)
    loss.sum().backward()
    assert float(loss.detach()) == 0 and torch.isfinite(every.grad).all()


def test_the_learning_rate_falls_linearly_over_the_last_share_of_steps(classifier):
    constant = build(classifier, steps=100)
    assert {constant.learning_rate_at(step) for step in (0, 50, 99)} == {1e-3}
    method = build(classifier, steps=100, learning_rate_decay=0.5, learning_rate=1e-3)
    assert method.learning_rate_at(0) == method.learning_rate_at(49) == 1e-3
    assert method.learning_rate_at(75) == pytest.approx(5e-4)
    assert method.learning_rate_at(99) == pytest.approx(2e-5)
    method.step = 75  # as after resuming a checkpoint: the schedule follows the step
    train(method, 1)
    for optimizer in method.optimizers().values():
        assert optimizer.param_groups[0]["lr"] == pytest.approx(5e-4)


def test_substrate_and_mask_losses_on_known_inputs():
    target = torch.full((1, 1, 4, 4), 0.5)
    assert float(substrate_loss(target, target)) == 0
    # |T - G| = 1: 1 - log(1 - 1/4).
    assert float(substrate_loss(target, target - 1)) == pytest.approx(1 + math.log(4 / 3))
    assert torch.isfinite(substrate_loss(torch.ones(1, 1, 2, 2), -torch.ones(1, 1, 2, 2))).all()
    white, black = torch.ones(1, 1, 4, 4), torch.zeros(1, 1, 4, 4)
    everywhere, left_half = torch.ones(1, 4, 4), torch.zeros(1, 4, 4)
    left_half[:, :, :2] = 1
    assert float(mask_loss(white, everywhere, 1.0)) == 0
    assert float(mask_loss(black, everywhere, 1.0)) == 1
    assert float(mask_loss(black, left_half, 1.0)) == 0.5


@pytest.mark.parametrize("form", ["margin", "paper"])
def test_a_few_steps_in_a_loop_like_orchestration_train_both_modules(classifier, form):
    method = build(classifier, classifier_loss=form)
    before = parameters(method)
    losses = train(method, 3)
    assert method.step == 3
    assert set(losses[0]) >= {"gan", "mask", "positive", "negative", "substrate", "discriminator", "total",
                              "confidence"}
    assert all(math.isfinite(value) for parts in losses for value in parts.values())
    after = parameters(method)
    for name in ("generator", "discriminator"):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(name)), name


def test_state_round_trip_restores_both_modules_and_optimisers(classifier):
    trained = build(classifier)
    train(trained, 2)
    restored = build(classifier, seed=99)
    checkpoint = io.BytesIO()  # through bytes, as a checkpoint goes (a live state dict shares Adam's tensors)
    torch.save(trained.state_dict(), checkpoint)
    checkpoint.seek(0)
    restored.load_state_dict(torch.load(checkpoint, weights_only=True))
    assert restored.step == 2
    for key, value in parameters(trained).items():
        assert torch.equal(value, parameters(restored)[key]), key
    for name in ("generator", "discriminator"):
        assert restored.optimizers()[name].state_dict()["state"].keys() == \
            trained.optimizers()[name].state_dict()["state"].keys()
    # Same modules and optimiser moments: the next step is the same step.
    batch = next(iter(torch.utils.data.DataLoader(trained.training_data(None), batch_size=4)))
    assert trained.training_step(batch, torch.Generator().manual_seed(7), 4) == \
        restored.training_step(batch, torch.Generator().manual_seed(7), 4)


def test_same_seed_same_training_and_same_counterfeits(classifier):
    first, second = build(classifier), build(classifier)
    assert train(first, 2) == train(second, 2)
    targets = torch.arange(10)
    assert torch.equal(first.sample(targets, seed=5), second.sample(targets, seed=5))
    assert not torch.equal(first.sample(targets, seed=5), first.sample(targets, seed=6))


def test_sampling_meets_the_contract_with_source_ids(classifier):
    method = build(classifier)
    targets = torch.tensor([0, 3, 9])
    sources, ids = method.source_images(None, targets, seed=1)
    assert sources.shape == (3, *SHAPE) and len(ids) == 3 and ids[0].startswith("substrate:") and "#" in ids[0]
    images = method.sample(targets, seed=1, sources=sources)
    assert images.shape == (3, *SHAPE) and images.dtype == torch.float32
    assert 0 <= images.min() and images.max() <= 1
    lineage = method.sample_with_lineage(targets, seed=1)
    assert torch.equal(lineage.images, images) and lineage.source_ids == ids
    active = torch.zeros(4, 10, dtype=torch.bool)
    active[1, [2, 5]] = True
    active[2, [1, 4, 7]] = True
    active[3, 0] = True
    assert method.sample_active(active, seed=2).shape == (4, *SHAPE)


def test_outputs_larger_than_the_classifier_input_are_cropped_and_resized():
    classifier = SmallCNN((3, 16, 16), 10, width=8, hidden=32).eval().requires_grad_(False)
    method = SubstrateGan(SubstrateGanConfig(**TINY, output_size=32), MethodContext((3, 16, 16), 10, classifier))
    assert method.crop_side == 16
    losses = train(method, 1)
    assert math.isfinite(losses[0]["total"])
    sources, _ = method.source_images(None, torch.arange(2), seed=0)
    assert sources.shape == (2, 3, 32, 32)
    assert method.paint(sources, torch.eye(10)[:2], seed=0).shape == (2, 3, 32, 32)
    assert method.sample(torch.arange(2), seed=0, sources=sources).shape == (2, 3, 16, 16)


def test_grayscale_classifier_input_and_a_user_mask(tmp_path):
    from PIL import Image

    seen = []

    def classifier(images):
        seen.append(images)
        return torch.zeros(len(images), 10, requires_grad=True) + images.mean()

    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:, :4] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    method = SubstrateGan(SubstrateGanConfig(**TINY, grayscale_classifier_input=True, mask="image",
                                             mask_image=str(tmp_path / "mask.png")),
                          MethodContext((3, 8, 8), 10, classifier))
    train(method, 1)
    assert torch.equal(seen[0][:, 0], seen[0][:, 1]) and torch.equal(seen[0][:, 1], seen[0][:, 2])
    background = method.background_mask(torch.rand(2, 3, 8, 8))
    assert torch.equal(background[0], torch.from_numpy(mask >= 128).float())


def test_bad_inputs_are_one_line_errors(classifier, tmp_path):
    with pytest.raises(CccError, match="max_active_classes.*paints only 2"):
        build(classifier, classes=[1, 2], max_active_classes=3)
    with pytest.raises(CccError, match="gan_weight: must be >= 0"):
        build(classifier, gan_weight=-1.0)
    with pytest.raises(CccError, match="learning_rate: must be positive"):
        build(classifier, learning_rate=0.0)
    with pytest.raises(CccError, match="needs a mask image"):
        build(classifier, mask="image")
    with pytest.raises(CccError, match="not a readable image"):
        build(classifier, mask="image", mask_image=str(tmp_path / "missing.png"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CccError, match="holds no images"):
        build(classifier, substrate_folder=str(tmp_path / "empty")).training_data(None)
    method = build(classifier, classes=[1, 2], max_active_classes=2)
    with pytest.raises(CccError, match="paints classes \\[1, 2\\] only"):
        method.sample(torch.tensor([3]), seed=0)
    too_many = torch.zeros(1, 10)
    too_many[0, :4] = 1
    with pytest.raises(CccError, match="4 in one image"):
        build(classifier).sample_active(too_many, seed=0)
    with pytest.raises(CccError, match="out of range"):
        build(classifier).sample(torch.tensor([10]), seed=0)


def test_a_weights_file_that_does_not_fit_the_named_architecture(tmp_path):
    import torchvision

    from ccc_ray.classifiers.build import ClassifierConfig, build_classifier
    from ccc_ray.classifiers.weights import load_initial_weights

    path = tmp_path / "mobilenet.pt"
    torch.save(torchvision.models.mobilenet_v3_small(num_classes=10).state_dict(), path)
    config = ClassifierConfig(arch="resnet18", weights=str(path))
    model = build_classifier(config, (3, 32, 32), 10)
    with pytest.raises(CccError, match="do not fit the model") as error:
        load_initial_weights(model, config, (3, 32, 32), 10)
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_the_gpu_size_configuration_builds_and_takes_one_step_on_cpu(tmp_path):
    """512 x 512 outputs against VGG16 (random weights standing in for the local ImageNet file), batch 1."""
    import torchvision

    from ccc_ray.classifiers.build import ClassifierConfig, build_classifier
    from ccc_ray.classifiers.weights import load_initial_weights

    torch.set_num_threads(2)
    path = tmp_path / "vgg16.pt"
    torch.save(torchvision.models.vgg16(num_classes=1000).state_dict(), path)
    config = ClassifierConfig(arch="vgg16", weights=str(path))
    vgg = build_classifier(config, (3, 224, 224), 1000)
    load_initial_weights(vgg, config, (3, 224, 224), 1000)
    vgg.eval().requires_grad_(False)
    paper = SubstrateGanConfig.paper_512([1, 151, 339, 409, 817])
    paper.batch_size = 1
    method = SubstrateGan(paper, MethodContext((3, 224, 224), 1000, vgg))
    assert method.generator.depth == 6 and method.tile_hw == (8, 8) and method.crop_side == 224
    batch = next(iter(torch.utils.data.DataLoader(method.training_data(None), batch_size=1)))
    assert batch[0].shape == (1, 3, 512, 512)
    losses = method.training_step(batch, torch.Generator().manual_seed(0), 1)
    assert math.isfinite(losses["total"]) and method.step == 1
    painted = method.paint(batch[0], torch.nn.functional.one_hot(torch.tensor([151]), 1000), seed=0)
    assert painted.shape == (1, 3, 512, 512)
