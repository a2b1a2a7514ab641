import pytest
import torch

from ccc_ray.errors import CccError
from ccc_ray.methods.direct_encoding import DirectEncoding, DirectEncodingConfig, polynomial_mutation

torch.set_num_threads(1)  # tiny tensors: more threads only contend with other processes

SHAPE = (1, 8, 8)


def encoding(**overrides) -> DirectEncoding:
    return DirectEncoding(DirectEncodingConfig(**overrides), SHAPE)


def changed_fraction(generation: int, count: int = 1000) -> float:
    enc = encoding()
    generator = torch.Generator().manual_seed(generation)
    parents = enc.initial(count, generator)
    return float((enc.mutate(parents, generation, generator) != parents).float().mean())


def test_initial_genomes_are_uniform_images_and_render_to_themselves():
    enc = encoding()
    genomes = enc.initial(500, torch.Generator().manual_seed(0))
    assert genomes.shape == (500, *SHAPE) and genomes.dtype == torch.float32
    assert genomes.min() >= 0 and genomes.max() <= 1
    assert abs(float(genomes.mean()) - 0.5) < 0.01  # uniform on [0, 1]
    assert abs(float(genomes.std()) - (1 / 12) ** 0.5) < 0.01
    assert enc.render(genomes) is genomes


def test_each_pixel_is_mutated_with_probability_one_tenth():
    assert abs(changed_fraction(0) - 0.1) < 0.005  # 64,000 pixels: the binomial sd is 0.0012


def test_mutation_rate_halves_every_thousand_generations():
    enc = encoding()
    assert [enc.mutation_rate(g) for g in (0, 999, 1000, 1999, 2000, 5000)] == \
        [0.1, 0.1, 0.05, 0.05, 0.025, 0.1 / 32]
    assert abs(changed_fraction(1000) - 0.05) < 0.004
    assert abs(changed_fraction(2000) - 0.025) < 0.003
    assert encoding(rate_halving_period=10).mutation_rate(25) == pytest.approx(0.025)


def test_mutated_pixels_stay_in_range_and_move_by_small_polynomial_steps():
    enc = encoding(mutation_rate=1.0)
    generator = torch.Generator().manual_seed(0)
    extremes = torch.cat([torch.zeros(200, *SHAPE), torch.ones(200, *SHAPE)])
    children = extremes
    for generation in range(20):
        children = enc.mutate(children, generation, generator)
        assert children.min() >= 0 and children.max() <= 1
    # From a bound, a mutation can only move inward, and with eta = 15 it moves little.
    once = enc.mutate(extremes, 0, generator)
    assert (once[:200] >= 0).all() and (once[:200] > 0).float().mean() > 0.4
    middle = torch.full((5000,), 0.5)
    step = polynomial_mutation(middle, 0.0, 1.0, 15.0, torch.ones(5000, dtype=torch.bool), generator) - 0.5
    assert abs(float(step.mean())) < 0.005  # symmetric in the middle of the range
    assert float(step.abs().mean()) == pytest.approx(1 / 17, rel=0.05)  # E|step| = span / (eta + 2), far from bounds
    weaker = polynomial_mutation(middle, 0.0, 1.0, 2.0, torch.ones(5000, dtype=torch.bool), generator) - 0.5
    assert weaker.abs().mean() > 3 * step.abs().mean()  # a smaller eta takes larger steps


def test_polynomial_mutation_touches_only_the_masked_entries():
    values = torch.rand(100, generator=torch.Generator().manual_seed(1)) * 20 - 10
    mask = torch.arange(100) % 3 == 0
    mutated = polynomial_mutation(values, -10.0, 10.0, 15.0, mask, torch.Generator().manual_seed(2))
    assert torch.equal(mutated[~mask], values[~mask])
    assert (mutated[mask] != values[mask]).all()
    assert mutated.min() >= -10 and mutated.max() <= 10


def test_same_seed_same_genomes_and_children():
    enc = encoding()

    def run(seed):
        generator = torch.Generator().manual_seed(seed)
        return enc.mutate(enc.initial(50, generator), 3, generator)

    assert torch.equal(run(7), run(7))
    assert not torch.equal(run(7), run(8))


@pytest.mark.parametrize("field, value", [("mutation_rate", -0.1), ("mutation_rate", 1.5),
                                          ("rate_halving_period", 0), ("distribution_index", -1.0)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(CccError, match=field):
        encoding(**{field: value})


def test_bad_image_shape_is_refused():
    with pytest.raises(CccError, match="image shape"):
        DirectEncoding(DirectEncodingConfig(), (8, 8))
