"""The far rule: fitted radius, what counts as far, the space it measures in, and bad input."""

from __future__ import annotations

import pytest
import torch

from ccc_ray.config import check_bounds
from ccc_ray.counterfeits.far import FEATURES, PIXELS, FarFromData, FarRule
from ccc_ray.counterfeits.quality import quantize
from ccc_ray.errors import CccError


def test_the_radius_is_the_percentile_of_held_out_nearest_distances_so_real_images_are_mostly_near(digits):
    far = FarFromData.fit(FarRule(percentile=95), digits.train_images, digits.test_images)
    assert far.space == PIXELS  # 8x8 digits: pixel space under auto
    share_far = float(far.is_far(digits.test_images).double().mean())
    assert 0.04 <= share_far <= 0.06  # 5% of real held-out digits are far by construction
    assert not far.is_far(digits.train_images).any()  # a training image is at distance 0


def test_noise_is_far_and_an_image_at_the_radius_counts_as_far(digits):
    far = FarFromData.fit(FarRule(), digits.train_images, digits.test_images)
    noise = torch.rand(20, *digits.image_shape, generator=torch.Generator().manual_seed(0))
    assert far.is_far(noise).all()
    distances = far.nearest(digits.test_images)
    at_radius = digits.test_images[(distances - far.radius).abs().argmin()][None]
    far.radius = float(far.nearest(at_radius))
    assert far.is_far(at_radius).all()  # "at or above the percentile"


def test_stored_uint8_images_are_judged_as_their_float_values(digits):
    far = FarFromData.fit(FarRule(), digits.train_images, digits.test_images)
    stored = quantize(digits.test_images[:30])
    torch.testing.assert_close(far.nearest(stored), far.nearest(stored.float() / 255))


def test_feature_space_uses_the_classifier_and_auto_switches_by_image_size(digits, digits_classifier_file):
    from ccc_ray.classifiers.weights import load_classifier

    classifier, _ = load_classifier(digits_classifier_file)
    far = FarFromData.fit(FarRule(space="features"), digits.train_images, digits.test_images, classifier)
    assert far.space == FEATURES and far.reference.shape[0] == len(digits.train_images)
    assert 0.03 <= float(far.is_far(digits.test_images).double().mean()) <= 0.07
    assert FarRule(auto_pixel_limit=32).chosen_space(digits.image_shape) == FEATURES
    assert FarRule().chosen_space((3, 32, 32)) == FEATURES and FarRule().chosen_space((1, 28, 28)) == PIXELS


def test_bad_input_is_one_ccc_error(digits):
    with pytest.raises(CccError, match="features needs a torch classifier"):
        FarFromData.fit(FarRule(space="features"), digits.train_images, digits.test_images)
    with pytest.raises(CccError, match="percentile: must lie in"):
        check_bounds(FarRule(percentile=20), "far.")
    far = FarFromData.fit(FarRule(), digits.train_images, digits.test_images)
    with pytest.raises(CccError, match="N x C x H x W"):
        far.is_far(torch.rand(3, 64))
    with pytest.raises(CccError, match="values per image"):
        far.is_far(torch.rand(3, 1, 4, 4))
