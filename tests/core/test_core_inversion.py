"""ccc_ray/methods/inversion.py and generator_file.py: sampling contract, training, state and files."""

import io

import pytest
import torch
from torch import nn

from ccc_ray.classifiers.weights import fingerprint
from ccc_ray.errors import CccError
from ccc_ray.methods import METHODS, MethodContext, TrainedMethod
from ccc_ray.methods.generator_file import load_generator, save_generator
from ccc_ray.methods.inversion import InversionConfig, NetworkInversion

torch.set_num_threads(1)

SHAPE = (1, 8, 8)


def tiny_config(**changes):
    settings = dict(latent_dim=8, embed_dim=4, base_channels=16, batch_size=24, learning_rate=1e-2)
    settings.update(changes)
    return InversionConfig(**settings)


def inversion(config, image_shape=SHAPE, num_classes=3, classifier=None):
    return NetworkInversion(config, MethodContext(image_shape, num_classes, classifier))


def band_classifier(requires_grad=False):
    """Fixed linear classifier on 8x8 images: class k lights up when band k of rows is bright."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    bands = torch.zeros(3, 8, 8)
    bands[0, :3], bands[1, 3:6], bands[2, 6:] = 1, 1, 1
    with torch.no_grad():
        flat = bands.flatten(1)
        model[1].weight.copy_((flat - flat.mean(0)) * 0.5)
        model[1].bias.zero_()
    return model.eval().requires_grad_(requires_grad)


def test_inversion_is_registered_and_trainable():
    method = inversion(tiny_config(), SHAPE, 3)
    assert METHODS["inversion"] is NetworkInversion and NetworkInversion.config_class is InversionConfig
    assert isinstance(method, TrainedMethod) and set(method.modules()) == {"generator"}


@pytest.mark.parametrize("image_shape", [(1, 8, 8), (3, 10, 7)])
def test_samples_have_the_shape_and_range_of_the_data(image_shape):
    method = inversion(tiny_config(), image_shape, 3)
    images = method.sample(torch.tensor([0, 1, 2, 1, 0]), seed=0)
    assert images.shape == (5, *image_shape) and images.dtype == torch.float32
    assert float(images.min()) >= 0 and float(images.max()) <= 1


def test_sample_is_deterministic_per_seed():
    method = inversion(tiny_config(), SHAPE, 3)
    targets = torch.tensor([0, 1, 2, 0])
    first = method.sample(targets, seed=11)
    assert torch.equal(first, method.sample(targets, seed=11))
    assert not torch.allclose(first, method.sample(targets, seed=12))
    # Different classes from the same latent draw give different images: the condition is used.
    assert not torch.allclose(method.sample(torch.zeros(4, dtype=torch.int64), seed=11),
                              method.sample(torch.full((4,), 2), seed=11))


def test_sample_rejects_targets_outside_the_classes():
    method = inversion(tiny_config(), SHAPE, 3)
    with pytest.raises(CccError, match=r"target class 3 is out of range: classes are 0 to 2"):
        method.sample(torch.tensor([0, 3]), seed=0)


def test_training_steps_lower_the_loss_and_leave_the_classifier_alone():
    classifier = band_classifier(requires_grad=True)
    before = fingerprint(classifier)
    method = inversion(tiny_config(), SHAPE, 3, classifier)
    generator = torch.Generator().manual_seed(0)
    history = [method.training_step(None, generator, 24) for _ in range(8)]
    assert set(history[0]) == {"kl", "ce", "cosine", "orthogonality", "pixel_cosine", "total", "confidence"}
    assert method.step == 8
    assert history[-1]["total"] < 0.6 * history[0]["total"]
    assert history[-1]["kl"] < 0.5 * history[0]["kl"]
    assert history[-1]["confidence"] > history[0]["confidence"] + 0.2
    assert fingerprint(classifier) == before


def test_soft_conditioning_keeps_the_target_as_argmax():
    method = inversion(tiny_config(conditioning="soft"), SHAPE, 5)
    targets = torch.arange(50) % 5
    condition = method.conditioning(targets, torch.Generator().manual_seed(0))
    assert torch.equal(condition.argmax(1), targets)
    assert torch.allclose(condition.sum(1), torch.ones(50))
    assert float(condition.max(1).values.min()) < 1  # soft, not one-hot


def test_state_dict_round_trip_gives_identical_samples_and_training():
    classifier = band_classifier()
    trained = inversion(tiny_config(), SHAPE, 3, classifier)
    for _ in range(2):
        trained.training_step(None, torch.Generator().manual_seed(1), 24)
    restored = inversion(tiny_config(seed=5), SHAPE, 3, classifier)
    targets = torch.tensor([0, 1, 2])
    assert not torch.allclose(restored.sample(targets, 3), trained.sample(targets, 3))

    # Through bytes, as a Ray checkpoint carries it; weights_only proves the state holds no arbitrary objects.
    buffer = io.BytesIO()
    torch.save(trained.state_dict(), buffer)
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.step == 2
    assert torch.equal(restored.sample(targets, 3), trained.sample(targets, 3))
    # The optimiser state came along too: one more identical step keeps them identical.
    torch.manual_seed(9)
    loss_trained = trained.training_step(None, torch.Generator().manual_seed(2), 24)
    torch.manual_seed(9)
    loss_restored = restored.training_step(None, torch.Generator().manual_seed(2), 24)
    assert loss_trained == loss_restored
    assert torch.equal(restored.sample(targets, 3), trained.sample(targets, 3))


def test_generator_file_round_trip_keeps_lineage(tmp_path):
    method = inversion(tiny_config(conditioning="soft"), SHAPE, 3, band_classifier())
    method.training_step(None, torch.Generator().manual_seed(0), 24)
    path = tmp_path / "generator-inversion.safetensors"
    save_generator(path, method, ["a", "b", "c"], "f" * 64)

    loaded, meta = load_generator(path)
    assert meta["classifier_sha256"] == "f" * 64
    assert meta["method"] == "inversion" and meta["class_names"] == ["a", "b", "c"]
    assert tuple(meta["image_shape"]) == SHAPE
    assert loaded.config == method.config and loaded.step == 1
    targets = torch.tensor([2, 1, 0, 2])
    assert torch.equal(loaded.sample(targets, 4), method.sample(targets, 4))


def test_generator_file_errors(tmp_path):
    with pytest.raises(CccError, match="does not exist; run `ccc-ray train-generator` first"):
        load_generator(tmp_path / "missing.safetensors")
    from safetensors.torch import save

    bare = tmp_path / "bare.safetensors"
    bare.write_bytes(save({"w": torch.zeros(2)}))
    with pytest.raises(CccError, match="has no ccc-ray generator metadata"):
        load_generator(bare)


def test_a_generator_file_written_before_modules_were_named_still_loads(tmp_path):
    """Files from before the method interface held the generator's weights unprefixed and no module list."""
    import json
    from dataclasses import asdict

    from safetensors.torch import save

    method = inversion(tiny_config(), SHAPE, 3, band_classifier())
    method.training_step(None, torch.Generator().manual_seed(0), 24)
    meta = {"method": "inversion", "config": asdict(method.config), "image_shape": list(SHAPE),
            "class_names": ["a", "b", "c"], "classifier_sha256": "e" * 64, "steps": 1}
    state = {name: tensor.contiguous() for name, tensor in method.generator.state_dict().items()}
    path = tmp_path / "old.safetensors"
    path.write_bytes(save(state, metadata={"ccc_ray.generator": json.dumps(meta)}))
    loaded, _ = load_generator(path)
    targets = torch.tensor([0, 1, 2])
    assert torch.equal(loaded.sample(targets, 5), method.sample(targets, 5))
