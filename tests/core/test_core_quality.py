"""ccc_ray/quality.py: the stored uint8 grid, nearest-neighbour distances and the diversity ratio."""

import torch

from ccc_ray.data.digits import load_digits_arrays
from ccc_ray.counterfeits.quality import dequantize, mean_pairwise_distance, nearest_distances, per_class_diversity_ratio, quantize

torch.set_num_threads(1)


def test_quantize_dequantize_is_exact_on_the_uint8_grid():
    grid = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    values = dequantize(grid)
    assert values.dtype == torch.float32 and float(values.max()) == 1.0 and float(values.min()) == 0.0
    assert torch.equal(quantize(values), grid)


def test_quantize_rounds_to_nearest_and_clamps():
    images = torch.rand(4, 3, 5, 5, generator=torch.Generator().manual_seed(0))
    stored = quantize(images)
    assert stored.dtype == torch.uint8
    assert float((dequantize(stored) - images).abs().max()) <= 0.5 / 255 + 1e-6
    assert quantize(torch.tensor([-0.5, 1.5, 0.5 / 255 + 1e-4, 0.5 / 255 - 1e-4])).tolist() == [0, 255, 1, 0]


def test_nearest_distances_match_brute_force():
    generator = torch.Generator().manual_seed(1)
    queries = torch.rand(7, 1, 4, 4, generator=generator)
    references = torch.rand(11, 1, 4, 4, generator=generator)
    brute = torch.tensor([min(float((q - r).pow(2).sum().sqrt()) for r in references) for q in queries])
    for chunk in (3, 2048):  # chunked and in one go
        assert torch.allclose(nearest_distances(queries, references, chunk=chunk), brute, atol=1e-5)
    # A query equal to a reference is at distance 0.
    assert float(nearest_distances(references[4:5], references)[0]) < 1e-5
    assert nearest_distances(queries[:0], references).numel() == 0


def test_mean_pairwise_distance_known_values():
    points = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    assert abs(mean_pairwise_distance(points) - 10 / 3) < 1e-6  # pair distances 5, 0, 5
    assert mean_pairwise_distance(points[:1]) == 0.0


def test_diversity_ratio_is_zero_for_a_collapsed_set_and_about_one_for_real_data():
    images, labels, _ = load_digits_arrays()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    half_a, half_b = order[: len(order) // 2], order[len(order) // 2:]
    real, real_labels = images[half_a], labels[half_a]

    held_out = per_class_diversity_ratio(images[half_b], labels[half_b], real, real_labels, 10)
    assert set(held_out) == set(range(10))
    assert all(0.85 < ratio < 1.15 for ratio in held_out.values()), held_out

    # Every counterfeit of a class is the same image: no diversity at all.
    firsts = torch.stack([real[real_labels == k][0] for k in range(10)])
    collapsed = firsts.repeat_interleave(20, dim=0)
    targets = torch.arange(10).repeat_interleave(20)
    assert all(ratio < 1e-3 for ratio in per_class_diversity_ratio(collapsed, targets, real, real_labels, 10).values())

    # A class without counterfeits scores 0 rather than failing.
    assert per_class_diversity_ratio(images[half_b][:0], labels[half_b][:0], real, real_labels, 10)[3] == 0.0
