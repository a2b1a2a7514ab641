"""Direct encoding for evolving fooling images: every pixel is a gene.

Paper: Nguyen, Yosinski & Clune, "Deep Neural Networks are Easily Fooled: High Confidence Predictions for
Unrecognizable Images" (CVPR 2015), the direct encoding. Genomes are initialised uniformly at random
over the full value range; each pixel is mutated with probability 0.1, a rate that halves every 1,000
generations; a chosen pixel gets Deb's polynomial mutation with a fixed strength (distribution index) 15.

Contract: genomes are float32 P x C x H x W in [0, 1]; `render` is the identity, so a genome is its image.
The encoding is driven by `ccc_ray.methods.map_elites.MapElites`; every operation is vectorised over the
population (no per-individual Python loop).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ccc_ray.config import check_bounds, option
from ccc_ray.errors import CccError
from ccc_ray.methods.map_elites import EvolutionMethod, EvolutionSchedule


@dataclass
class DirectEncodingConfig(EvolutionSchedule):
    mutation_rate: float = option(0.1, "probability that a pixel is mutated, at generation 0", ge=0, le=1)
    rate_halving_period: int = option(1000, "generations after which the mutation rate halves", ge=1)
    distribution_index: float = option(15.0, "polynomial mutation strength eta (larger: smaller steps)", ge=0)


def polynomial_mutation(values: torch.Tensor, low: float, high: float, eta: float, mask: torch.Tensor,
                        generator: torch.Generator) -> torch.Tensor:
    """Deb's bounded polynomial mutation of the entries where `mask` is true (as DEAP's mutPolynomialBounded).

    `values` lie in [low, high]; the result does too. Larger `eta` keeps the child closer to the parent,
    and the step shrinks near a bound so that the bound is reachable but never crossed.
    """
    picked = values[mask]  # only the chosen entries are computed: a mutation rate of 0.1 skips 90%
    span = high - low
    u = torch.rand(picked.shape, generator=generator, device=values.device, dtype=values.dtype)
    power = 1.0 / (eta + 1.0)
    below = (picked - low) / span  # delta_1: distance to the lower bound, in spans
    above = (high - picked) / span  # delta_2
    down = (2 * u + (1 - 2 * u) * (1 - below).pow(eta + 1)).pow(power) - 1
    up = 1 - (2 * (1 - u) + 2 * (u - 0.5) * (1 - above).pow(eta + 1)).pow(power)
    step = torch.where(u < 0.5, down, up) * span
    mutated = values.clone()
    mutated[mask] = (picked + step).clamp(low, high)
    return mutated


class DirectEncoding:
    """Pixels as genes; used by MAP-Elites (see `ccc_ray.methods.map_elites`)."""

    name = "direct_encoding"

    def __init__(self, config: DirectEncodingConfig, image_shape: tuple[int, int, int],
                 device: torch.device | str = "cpu"):
        check_bounds(config, "direct_encoding.")
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise CccError(f"direct_encoding: image shape must be (C, H, W) with positive sizes, got {image_shape}")
        self.config = config
        self.image_shape = tuple(int(size) for size in image_shape)
        self.device = torch.device(device)

    def mutation_rate(self, generation: int) -> float:
        """The per-pixel mutation probability at `generation`: halved every `rate_halving_period` generations."""
        return self.config.mutation_rate * 0.5 ** (generation // self.config.rate_halving_period)

    def initial(self, count: int, generator: torch.Generator) -> torch.Tensor:
        """`count` genomes, count x C x H x W, uniform in [0, 1]."""
        return torch.rand(count, *self.image_shape, generator=generator, device=self.device)

    def mutate(self, parents: torch.Tensor, generation: int, generator: torch.Generator) -> torch.Tensor:
        """Children of `parents` (P x C x H x W): each pixel polynomially mutated with the generation's rate."""
        chosen = torch.rand(parents.shape, generator=generator, device=parents.device) < self.mutation_rate(generation)
        return polynomial_mutation(parents, 0.0, 1.0, self.config.distribution_index, chosen, generator)

    def render(self, genomes: torch.Tensor) -> torch.Tensor:
        """Images P x C x H x W in [0, 1]: the genomes themselves."""
        return genomes


class DirectEncodingEvolution(EvolutionMethod):
    """The method: MAP-Elites over direct-encoded images (`--attack.method direct_encoding`)."""

    name = "direct_encoding"
    config_class = DirectEncodingConfig
    encoding_class = DirectEncoding
