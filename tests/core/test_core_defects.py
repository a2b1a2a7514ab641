"""The defect data set (true masks from real digits) and the saliency metrics that use it."""

import pytest
import torch
from torch import nn

from ccc_ray.data.dataset import ImageDataset
from ccc_ray.data.defects import MIN_CHANGE, add_defects, defect_data
from ccc_ray.errors import CccError
from ccc_ray.saliency import best_threshold, calibrated_iou, gradient_saliency, mask_iou, random_saliency


def source(height=8, width=8, count=40):
    generator = torch.Generator().manual_seed(0)
    images = torch.zeros(count, 1, height, width)
    images[:, :, :, width // 2] = torch.rand(count, 1, height, generator=generator)  # one vertical stroke
    labels = torch.arange(count) % 2
    return ImageDataset("toy", images[:30], labels[:30], images[30:], labels[30:], ["a", "b"])


@pytest.mark.parametrize("size", [(8, 8), (28, 28), (12, 20)])
def test_defective_images_carry_a_true_mask_of_what_changed(size):
    data = source(*size)
    defects = defect_data(data, seed=3)
    dataset = defects.dataset
    assert dataset.class_names == ["clean", "defective"] and dataset.image_shape == (1, *size)
    for split in ("train", "test"):
        images, labels = getattr(dataset, f"{split}_images"), getattr(dataset, f"{split}_labels")
        masks, originals = getattr(defects, f"{split}_masks"), getattr(data, f"{split}_images")
        assert masks.shape == (len(images), *size) and masks.dtype == torch.bool
        clean = labels == 0
        assert torch.equal(images[clean], originals[clean]) and not masks[clean].any()
        assert (masks[~clean].flatten(1).sum(1) >= 3).all()
        change = (images - originals)[:, 0]
        assert (change[masks] >= MIN_CHANGE).all()  # every true-mask pixel visibly changed
        assert (change >= 0).all() and images.max() <= 1  # defects only brighten, stay in range
    assert 0 < dataset.train_labels.float().mean() < 1


def test_same_seed_same_defects_and_another_seed_others():
    data = source()
    first, second, other = defect_data(data, seed=1), defect_data(data, seed=1), defect_data(data, seed=2)
    assert torch.equal(first.dataset.train_images, second.dataset.train_images)
    assert torch.equal(first.train_masks, second.train_masks)
    assert not torch.equal(first.train_masks, other.train_masks)


def test_add_defects_refuses_images_outside_the_contract():
    with pytest.raises(CccError, match=r"\[0, 1\]"):
        add_defects(torch.full((2, 1, 8, 8), 3.0), torch.tensor([True, False]), 0)
    with pytest.raises(CccError, match="defective_share"):
        defect_data(source(), defective_share=1.0)


def test_mask_iou():
    truth = torch.zeros(3, 4, 4, dtype=torch.bool)
    truth[:, :2, :2] = True
    predicted = truth.clone()
    predicted[1, :2, 2:] = True  # twice the area: IoU 1/2
    predicted[2] = False  # nothing found: IoU 0
    assert mask_iou(predicted, truth).tolist() == [1.0, 0.5, 0.0]
    empty = torch.zeros(1, 4, 4, dtype=torch.bool)
    assert mask_iou(empty, empty).tolist() == [1.0]
    with pytest.raises(CccError, match="N x H x W"):
        mask_iou(predicted[0], truth[0])


def test_calibrated_threshold_comes_from_calibration_images_only():
    truth = torch.zeros(2, 4, 4, dtype=torch.bool)
    truth[:, 0] = True
    saliency = truth.float() * 0.5 + 0.1  # the region at 0.6, the rest at 0.1
    assert best_threshold(saliency, truth) in (0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)
    result = calibrated_iou((saliency, truth), (saliency, truth))
    assert result["iou"] == 1.0
    random = random_saliency((2, 4, 4), seed=0)
    assert random.shape == (2, 4, 4) and 0 <= random.min() and random.max() <= 1
    assert calibrated_iou((random, truth), (random, truth))["iou"] < 1.0


def test_gradient_saliency_points_at_the_pixels_the_model_reads():
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[1, 5] = 3.0  # class 1 reads pixel (1, 1) only
    saliency = gradient_saliency(model, torch.rand(2, 1, 4, 4), torch.tensor([1, 1]))
    assert saliency.shape == (2, 4, 4) and saliency.max() == 1.0
    assert saliency[:, 1, 1].tolist() == [1.0, 1.0] and saliency.sum() == 2.0
