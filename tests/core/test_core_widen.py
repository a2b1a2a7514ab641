import pytest
import torch
from torch import nn

from ccc_ray.classifiers.small_cnn import SmallCNN
from ccc_ray.errors import CccError
from ccc_ray.hardening.losses import reject_class_loss
from ccc_ray.classifiers.widen import widen_classifier

torch.set_num_threads(1)


def test_widened_classifier_keeps_the_old_logits_and_adds_a_zero_reject_logit():
    torch.manual_seed(0)
    model = SmallCNN((1, 8, 8), 10).eval()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    widened = widen_classifier(model, image_shape=(1, 8, 8)).eval()
    images = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        old, new = model(images), widened(images)
    assert new.shape == (5, 11)
    assert torch.allclose(new[:, :10], old, atol=1e-6)
    assert torch.equal(new[:, 10], torch.zeros(5))
    assert model.head.out_features == 10  # the input model is untouched
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())


def test_widening_draws_nothing_from_the_global_rng():
    model = SmallCNN((1, 8, 8), 3)
    torch.manual_seed(7)
    widen_classifier(model)
    after_widening = torch.rand(3)
    torch.manual_seed(7)
    assert torch.equal(torch.rand(3), after_widening)


def test_reject_fine_tuning_trains_the_new_row():
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    widened = widen_classifier(mlp, (1, 4, 4))
    logits = widened(torch.rand(4, 1, 4, 4))
    assert logits.shape == (4, 4)
    reject_class_loss(logits, torch.tensor([0, 1, 3, 3]), torch.ones(4)).backward()
    assert widened[3].weight.grad[3].abs().sum() > 0


class OutputRegisteredFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.out = nn.Linear(8, 3)
        self.proj = nn.Linear(16, 8)

    def forward(self, images):
        return self.out(self.proj(images.flatten(1)))


def test_a_last_linear_that_is_not_the_output_is_refused():
    with pytest.raises(CccError, match="not the output layer"):
        widen_classifier(OutputRegisteredFirst(), image_shape=(1, 4, 4))
    with pytest.raises(CccError, match="no nn.Linear"):
        widen_classifier(nn.Sequential(nn.Conv2d(1, 2, 3)))
