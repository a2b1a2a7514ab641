"""ccc_ray/data/real_ood.py: the real OOD sets are drawn as plans and rendered image by image, so any slice
of a plan renders exactly those images of the whole set (what lets Ray Data render a large set in blocks)."""

import numpy as np
import pytest
import torch

from ccc_ray.data.real_ood import REAL_OOD_SETS, real_ood_images, real_ood_plans, render_real_ood


@pytest.mark.parametrize("image_shape", [(1, 8, 8), (3, 16, 16)])
def test_a_slice_of_a_plan_renders_the_same_images_as_the_whole_set(image_shape):
    sets = real_ood_images(image_shape, 30, seed=4)
    plans = real_ood_plans(30, seed=4)
    assert list(sets) == list(plans) == list(REAL_OOD_SETS)
    for name, plan in plans.items():
        whole = sets[name]
        assert whole.shape == (30, *image_shape) and whole.dtype == torch.float32
        assert 0 <= float(whole.min()) and float(whole.max()) <= 1
        for start, stop in ((0, 7), (7, 30), (12, 13)):
            assert torch.equal(render_real_ood(name, plan[start:stop], image_shape), whole[start:stop]), name


def test_the_sets_are_fixed_by_their_seed():
    first, again, other = (real_ood_images((1, 8, 8), 12, seed) for seed in (0, 0, 1))
    for name in first:
        assert torch.equal(first[name], again[name])
        assert not torch.equal(first[name], other[name])
    assert not np.array_equal(real_ood_plans(12, 0)["letters"], real_ood_plans(12, 1)["letters"])
