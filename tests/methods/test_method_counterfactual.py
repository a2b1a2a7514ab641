"""Seed 002 counterfactual GAN: training in-process as orchestration drives it, state, determinism, contract."""

import io

import pytest
import torch

from ccc_ray.classifiers.small_cnn import SmallCNN
from ccc_ray.data.dataset import ImageDataset
from ccc_ray.errors import CccError
from ccc_ray.methods import METHODS
from ccc_ray.methods.base import MethodContext
from ccc_ray.methods.counterfactual import CounterfactualConfig, CounterfactualGAN, edit_map

torch.set_num_threads(1)

SHAPE = (1, 8, 8)
K = 3


@pytest.fixture(scope="module")
def tiny_data():
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % K
    images = torch.rand(60, *SHAPE, generator=generator) * 0.3
    images[torch.arange(60), 0, labels * 2, :] = 1.0  # class k: a bright row 2k, so classes differ
    return ImageDataset("tiny", images[:48], labels[:48], images[48:], labels[48:], ["a", "b", "c"])


def make_method(joint_init="scratch", **overrides):
    config = CounterfactualConfig(steps=4, batch_size=8, base_channels=4, embed_dim=3, joint_init=joint_init,
                                  **overrides)
    classifier = SmallCNN(SHAPE, K, width=4, hidden=8) if joint_init == "classifier" else None
    return CounterfactualGAN(config, MethodContext(SHAPE, K, classifier))


def train(method, dataset, steps):
    """The orchestration loop in miniature: a DataLoader over training_data, one training_step per batch."""
    loader = torch.utils.data.DataLoader(method.training_data(dataset), batch_size=method.config.batch_size,
                                         shuffle=True, generator=torch.Generator().manual_seed(0))
    losses = []
    for step, batch in zip(range(steps), loader):
        losses.append(method.training_step(batch, torch.Generator().manual_seed(step), len(batch[0])))
    return losses


def test_registered_as_a_joint_method_with_sources():
    assert METHODS["counterfactual"] is CounterfactualGAN
    assert CounterfactualGAN.kind == "joint" and CounterfactualGAN.trains_classifier and CounterfactualGAN.uses_sources


def test_training_steps_report_finite_losses_and_change_both_modules(tiny_data):
    method = make_method()
    before = {name: [p.detach().clone() for p in module.parameters()] for name, module in method.modules().items()}
    losses = train(method, tiny_data, 3)
    assert method.step == 3
    for key in ("total", "confidence", "classification", "mask", "l1", "cycle", "joint_real", "joint_fake"):
        assert all(torch.isfinite(torch.tensor(parts[key])) for parts in losses), key
    for name, module in method.modules().items():
        assert any(not torch.equal(a, b) for a, b in zip(before[name], module.parameters())), name


def test_joint_model_has_k_plus_1_outputs_from_either_start(tiny_data):
    for init in ("scratch", "classifier"):
        method = make_method(init)
        joint = method.trained_classifier()
        assert joint is method.modules()["joint"]
        assert joint(tiny_data.test_images[:2]).shape == (2, K + 1)


def test_widened_start_keeps_the_classifiers_logits_and_leaves_it_untouched(tiny_data):
    method = make_method("classifier")
    classifier = method.context.classifier.eval()
    weights = [p.detach().clone() for p in classifier.parameters()]
    joint = method.trained_classifier().eval()
    with torch.no_grad():
        torch.testing.assert_close(joint(tiny_data.test_images)[:, :K], classifier(tiny_data.test_images))
    train(method, tiny_data, 2)
    assert all(torch.equal(a, b) for a, b in zip(weights, classifier.parameters()))


def test_classifier_start_needs_a_torch_module():
    config = CounterfactualConfig(base_channels=4, embed_dim=3, joint_init="classifier")
    with pytest.raises(CccError, match="joint_init"):
        CounterfactualGAN(config, MethodContext(SHAPE, K, lambda images: images.flatten(1)[:, :K]))


def test_state_dict_round_trip_restores_both_modules_and_optimisers(tiny_data):
    method = make_method()
    train(method, tiny_data, 2)
    buffer = io.BytesIO()  # through bytes, as a checkpoint: an in-memory state shares tensors with the optimiser
    torch.save(method.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer)
    assert set(state["modules"]) == set(state["optimizers"]) == {"generator", "joint"}
    restored = make_method()
    restored.load_state_dict(state)
    assert restored.step == 2
    for name in ("generator", "joint"):
        for a, b in zip(method.modules()[name].state_dict().values(), restored.modules()[name].state_dict().values()):
            assert torch.equal(a, b)
        saved, loaded = method.optimizers()[name].state_dict(), restored.optimizers()[name].state_dict()
        for index, moments in saved["state"].items():
            assert torch.equal(moments["exp_avg"], loaded["state"][index]["exp_avg"])
            assert torch.equal(moments["exp_avg_sq"], loaded["state"][index]["exp_avg_sq"])
    # Both continue identically: the same next step from the same state (dropout draws from the global RNG).
    batch = (tiny_data.train_images[:8], tiny_data.train_labels[:8])
    torch.manual_seed(9)
    original_next = method.training_step(batch, torch.Generator().manual_seed(9), 8)
    torch.manual_seed(9)
    assert restored.training_step(batch, torch.Generator().manual_seed(9), 8) == original_next


def test_a_step_depends_on_its_rng_alone_and_leaves_the_global_rng_as_it_was(tiny_data):
    """Dropout draws come from the step's rng, so a resumed Ray run repeats the uninterrupted one."""
    first, second = make_method(), make_method()
    batch = (tiny_data.train_images[:8], tiny_data.train_labels[:8])
    torch.manual_seed(1)
    one = first.training_step(batch, torch.Generator().manual_seed(5), 8)
    torch.manual_seed(2)
    expected = torch.rand(3)
    torch.manual_seed(2)
    two = second.training_step(batch, torch.Generator().manual_seed(5), 8)
    assert one == two
    assert torch.equal(torch.rand(3), expected)
    for a, b in zip(first.joint.parameters(), second.joint.parameters()):
        assert torch.equal(a, b)


def test_adversarial_reals_join_the_joint_loss_only_when_weighted(tiny_data):
    assert CounterfactualConfig().adversarial_weight == 1.0  # run A of BENCHMARKS issue 14 (the paper: 0)
    plain = make_method(adversarial_weight=0.0)
    adversarial = make_method(adversarial_weight=1.0, adversarial_epsilon=0.1, adversarial_steps=2)
    batch = (tiny_data.train_images[:8], tiny_data.train_labels[:8])
    off = plain.training_step(batch, torch.Generator().manual_seed(3), 8)
    on = adversarial.training_step(batch, torch.Generator().manual_seed(3), 8)
    assert "joint_adversarial" not in off
    assert on["joint_adversarial"] > 0 and torch.isfinite(torch.tensor(on["joint_adversarial"]))
    assert any(not torch.equal(a, b) for a, b in zip(plain.joint.parameters(), adversarial.joint.parameters()))
    assert adversarial.joint.training  # PGD ran in eval mode and put the model back
    again = make_method(adversarial_weight=1.0, adversarial_epsilon=0.1, adversarial_steps=2)
    assert again.training_step(batch, torch.Generator().manual_seed(3), 8) == on


def test_same_seed_same_sources_and_counterfactuals(tiny_data):
    method = make_method()
    train(method, tiny_data, 2)
    targets = torch.tensor([0, 1, 2, 0, 1])
    first, second = method.sample_with_lineage(targets, 7, tiny_data), method.sample_with_lineage(targets, 7, tiny_data)
    assert first.source_ids == second.source_ids
    assert torch.equal(first.images, second.images) and torch.equal(first.masks, second.masks)
    sources, ids = method.source_images(tiny_data, targets, 7)
    assert ids == first.source_ids
    assert torch.equal(method.sample(targets, 7, sources), first.images)
    assert method.source_images(tiny_data, targets, 8)[1] != ids  # another seed, other sources


def test_sources_are_test_images_of_another_class(tiny_data):
    targets = torch.tensor([0, 1, 2] * 5)
    sources, ids = make_method().source_images(tiny_data, targets, 0)
    rows = torch.tensor([int(i.removeprefix("test:")) for i in ids])
    assert all(i.startswith("test:") for i in ids)
    assert torch.equal(sources, tiny_data.test_images[rows])
    assert (tiny_data.test_labels[rows] != targets).all()


def test_images_and_masks_keep_the_contract(tiny_data):
    method = make_method()
    train(method, tiny_data, 2)
    targets = torch.tensor([1, 2, 0, 1])
    sampled = method.sample_with_lineage(targets, 0, tiny_data)
    assert sampled.images.shape == (4, *SHAPE) and sampled.images.dtype == torch.float32
    assert sampled.images.min() >= 0 and sampled.images.max() <= 1
    assert sampled.masks.shape == (4, 8, 8) and sampled.masks.dtype == torch.float32
    assert sampled.masks.min() >= 0 and sampled.masks.max() <= 1
    # Where the mask is 0 the source is kept: the change is bounded by the mask.
    sources = method.source_images(tiny_data, targets, 0)[0]
    assert ((sampled.images - sources).abs()[:, 0] <= sampled.masks + 1e-6).all()
    edits = edit_map(sources, sampled.images)
    assert edits.shape == (4, 8, 8) and edits.min() >= 0 and (edits <= sampled.masks + 1e-6).all()


def test_any_image_size_works():
    for shape in ((1, 28, 28), (3, 12, 10)):
        method = CounterfactualGAN(CounterfactualConfig(base_channels=4, embed_dim=3, joint_init="scratch"),
                                   MethodContext(shape, 2, None))
        images, masks = method.counterfactuals(torch.rand(2, *shape), torch.tensor([0, 1]))
        assert images.shape == (2, *shape) and masks.shape == (2, *shape[1:])


def test_bad_inputs_are_one_line_errors(tiny_data):
    method = make_method()
    targets = torch.tensor([0, 1])
    with pytest.raises(CccError, match="source's own class"):
        method.counterfactuals(tiny_data.test_images[:2], targets, source_labels=torch.tensor([2, 1]))
    with pytest.raises(CccError, match="must have shape 2x1x8x8"):
        method.sample(targets, 0, torch.rand(2, 1, 7, 7))
    with pytest.raises(CccError, match="must have shape"):
        method.sample(targets, 0, torch.rand(3, 1, 8, 8))
    with pytest.raises(CccError, match="needs source images"):
        method.sample(targets, 0)
    with pytest.raises(CccError, match=r"\[0, 1\]"):
        method.sample(targets, 0, torch.full((2, 1, 8, 8), 2.0))
    with pytest.raises(CccError, match="out of range"):
        method.sample(torch.tensor([0, K]), 0, torch.rand(2, 1, 8, 8))
    with pytest.raises(CccError, match="needs a batch"):
        method.training_step(None, torch.Generator(), 8)
    with pytest.raises(CccError) as error:
        method.sample(targets, 0, torch.rand(2, 1, 7, 7))
    assert "\n" not in str(error.value)


def test_config_bounds_are_declared():
    from ccc_ray.config import validate_config

    with pytest.raises(CccError, match="mask_weight"):
        validate_config(CounterfactualConfig(mask_weight=-1.0))
    with pytest.raises(CccError, match="classification_weight"):
        validate_config(CounterfactualConfig(classification_weight=0.0))
    with pytest.raises(CccError, match="adversarial_epsilon"):
        validate_config(CounterfactualConfig(adversarial_epsilon=0.0))
