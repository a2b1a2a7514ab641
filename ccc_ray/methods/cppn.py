"""Indirect encoding for evolving fooling images: a compositional pattern-producing network (CPPN) per genome.

Paper: Nguyen, Yosinski & Clune, "Deep Neural Networks are Easily Fooled" (CVPR 2015), the indirect
encoding, after Stanley's CPPNs and NEAT; details from the authors' code (Evolving-AI-Lab/fooling): networks start with
no hidden nodes; per-offspring mutation rates add-connection 0.5, delete-connection 0.3, add-node 0.5,
delete-node 0.2; weights by polynomial mutation (eta 15, per-weight rate 0.1) within [-10, 10].

A CPPN maps each pixel's coordinates (x, y in [-1, 1], distance to the centre d, and a bias of 1) to one
output node per channel. Hidden nodes use sine, sigmoid, Gaussian or linear activations; output nodes
use a sigmoid, which squashes the pixel into [0, 1].

Representation, chosen so a whole population renders as one batched tensor computation: each genome is a
padded graph over N = 4 + C + max_hidden node slots (inputs, outputs, then hidden slots), held as
P x N x N weights and connection masks (row: destination, column: source), P x N activations, and a
P x N float64 order key. Inputs have key 0, outputs key 1, a used hidden node a key in (0, 1), an unused
slot +inf; a connection only ever runs from a smaller to a larger key, so every genome stays acyclic.
Splitting a connection j -> i gives the new node the key halfway between. Rendering visits the nodes in
key order, one node of every genome per step (a batched gather and multiply over the coordinate grid).

Contract: `render` returns float32 P x C x H x W in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from ccc_ray.config import option, validate_config
from ccc_ray.errors import CccError
from ccc_ray.methods.direct_encoding import polynomial_mutation
from ccc_ray.methods.map_elites import EvolutionMethod, EvolutionSchedule

SINE, SIGMOID, GAUSSIAN, LINEAR = range(4)
ACTIVATIONS = ("sine", "sigmoid", "gaussian", "linear")
NUM_INPUTS = 4  # x, y, d, bias
LINEAR_LIMIT = 50.0  # linear nodes are clipped so deep linear chains cannot overflow float32


@dataclass
class CppnConfig(EvolutionSchedule):
    max_hidden: int = option(32, "hidden node slots per genome (add-node does nothing once they are full)", ge=0)
    add_node_rate: float = option(0.5, "probability per offspring of splitting a connection with a new node",
                                  ge=0, le=1)
    delete_node_rate: float = option(0.2, "probability per offspring of deleting a hidden node", ge=0, le=1)
    add_connection_rate: float = option(0.5, "probability per offspring of adding a connection", ge=0, le=1)
    delete_connection_rate: float = option(0.3, "probability per offspring of deleting a connection", ge=0, le=1)
    change_activation_rate: float = option(0.5, "probability per offspring of changing a hidden activation",
                                           ge=0, le=1)
    weight_mutation_rate: float = option(0.1, "probability per connection of a polynomial weight mutation",
                                         ge=0, le=1)
    distribution_index: float = option(15.0, "polynomial mutation strength eta for weights", ge=0)
    weight_range: float = option(10.0, "weights lie in [-weight_range, weight_range]", gt=0)
    initial_weight_range: float = option(1.0, "new connections draw weights uniformly from +-this", gt=0)

    def validate(self) -> None:
        if not self.initial_weight_range <= self.weight_range:
            raise CccError(f"cppn.initial_weight_range: must lie in (0, weight_range={self.weight_range}], "
                           f"got {self.initial_weight_range}")


@dataclass
class CppnGenomes:
    """A population of P padded CPPN graphs over N node slots; indexes and assigns like a tensor's first dim."""

    weights: torch.Tensor  # P x N x N float32, [p, i, j] is the weight of j -> i
    connected: torch.Tensor  # P x N x N bool
    activations: torch.Tensor  # P x N int64, indexes ACTIVATIONS (outputs are sigmoid regardless)
    order: torch.Tensor  # P x N float64: 0 inputs, 1 outputs, (0, 1) used hidden, inf unused

    def __len__(self) -> int:
        return self.weights.shape[0]

    def __getitem__(self, index) -> CppnGenomes:
        return CppnGenomes(*(getattr(self, f.name)[index] for f in fields(self)))

    def __setitem__(self, index, value: CppnGenomes) -> None:
        for f in fields(self):
            getattr(self, f.name)[index] = getattr(value, f.name)

    def clone(self) -> CppnGenomes:
        return CppnGenomes(*(getattr(self, f.name).clone() for f in fields(self)))

    @property
    def hidden_counts(self) -> torch.Tensor:
        """Used hidden nodes per genome (P, int64)."""
        return ((self.order > 0) & (self.order < 1)).sum(1)

    @property
    def connection_counts(self) -> torch.Tensor:
        """Connections per genome (P, int64)."""
        return self.connected.flatten(1).sum(1)


def coordinate_grid(height: int, width: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The CPPN inputs per pixel, 4 x (H * W): x, y in [-1, 1], distance to the centre, bias 1."""
    y, x = torch.meshgrid(torch.linspace(-1, 1, height, device=device),
                          torch.linspace(-1, 1, width, device=device), indexing="ij")
    distance = torch.sqrt(x ** 2 + y ** 2)
    return torch.stack([x, y, distance, torch.ones_like(x)]).flatten(1)


def _random_pick(mask: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One uniformly random true position per row of `mask` (P x M): (index P, whether the row had one P)."""
    scores = torch.rand(mask.shape, generator=generator, device=mask.device)
    scores = torch.where(mask, scores, torch.full_like(scores, -1.0))
    return scores.argmax(1), mask.any(1)


class Cppn:
    """CPPN genomes that render to images of `image_shape`; used by MAP-Elites (`ccc_ray.methods.map_elites`)."""

    name = "cppn"

    def __init__(self, config: CppnConfig, image_shape: tuple[int, int, int], device: torch.device | str = "cpu"):
        validate_config(config, "cppn.")
        if len(image_shape) != 3 or min(image_shape) < 1:
            raise CccError(f"cppn: image shape must be (C, H, W) with positive sizes, got {image_shape}")
        self.config = config
        self.image_shape = tuple(int(size) for size in image_shape)
        self.device = torch.device(device)
        self.channels = self.image_shape[0]
        self.num_nodes = NUM_INPUTS + self.channels + config.max_hidden
        self.outputs = slice(NUM_INPUTS, NUM_INPUTS + self.channels)
        self.hidden = slice(NUM_INPUTS + self.channels, self.num_nodes)
        self.grid = coordinate_grid(self.image_shape[1], self.image_shape[2], self.device)

    # ---- genomes -------------------------------------------------------------------------------------

    def initial(self, count: int, generator: torch.Generator) -> CppnGenomes:
        """`count` genomes with no hidden nodes: every input connected to every output, random weights."""
        n, dev = self.num_nodes, self.device
        connected = torch.zeros(count, n, n, dtype=torch.bool, device=dev)
        connected[:, self.outputs, :NUM_INPUTS] = True
        weights = self._new_weights((count, n, n), generator) * connected
        activations = torch.randint(len(ACTIVATIONS), (count, n), generator=generator, device=dev)
        order = torch.full((count, n), float("inf"), dtype=torch.float64, device=dev)
        order[:, :NUM_INPUTS], order[:, self.outputs] = 0.0, 1.0
        return CppnGenomes(weights, connected, activations, order)

    def _new_weights(self, shape, generator: torch.Generator) -> torch.Tensor:
        scale = self.config.initial_weight_range
        return (torch.rand(shape, generator=generator, device=self.device) * 2 - 1) * scale

    def mutate(self, parents: CppnGenomes, generation: int, generator: torch.Generator) -> CppnGenomes:
        """Children of `parents`: each structural mutation applies per child with its rate, then weights.

        `generation` is unused (the CPPN's rates are constant); it keeps the encoding interface uniform.
        Each operator works on the rows it selected only, so its cost follows its rate.
        """
        cfg, children = self.config, parents.clone()

        def chosen(rate: float) -> torch.Tensor:
            return torch.nonzero(torch.rand(len(children), generator=generator, device=self.device) < rate).squeeze(1)

        self._delete_node(children, chosen(cfg.delete_node_rate), generator)
        self._delete_connection(children, chosen(cfg.delete_connection_rate), generator)
        self._add_node(children, chosen(cfg.add_node_rate), generator)
        self._add_connection(children, chosen(cfg.add_connection_rate), generator)
        self._change_activation(children, chosen(cfg.change_activation_rate), generator)
        perturbed = children.connected.clone()  # draws for existing connections only
        perturbed[children.connected] = torch.rand(int(children.connected.sum()), generator=generator,
                                                   device=self.device) < cfg.weight_mutation_rate
        children.weights = polynomial_mutation(children.weights, -cfg.weight_range, cfg.weight_range,
                                               cfg.distribution_index, perturbed, generator)
        return children

    def _hidden_used(self, order: torch.Tensor) -> torch.Tensor:
        """R x N bool: the used hidden slots, for order keys R x N."""
        used = torch.zeros_like(order, dtype=torch.bool)
        used[:, self.hidden] = torch.isfinite(order[:, self.hidden])
        return used

    def _delete_node(self, genomes: CppnGenomes, rows: torch.Tensor, generator: torch.Generator) -> None:
        node, has = _random_pick(self._hidden_used(genomes.order[rows]), generator)
        rows, node = rows[has], node[has]
        genomes.connected[rows, node, :] = False
        genomes.connected[rows, :, node] = False
        genomes.weights[rows, node, :] = 0.0
        genomes.weights[rows, :, node] = 0.0
        genomes.order[rows, node] = float("inf")

    def _delete_connection(self, genomes: CppnGenomes, rows: torch.Tensor, generator: torch.Generator) -> None:
        edge, has = _random_pick(genomes.connected[rows].flatten(1), generator)
        rows, edge = rows[has], edge[has]
        n = self.num_nodes
        genomes.connected[rows, edge // n, edge % n] = False
        genomes.weights[rows, edge // n, edge % n] = 0.0

    def _add_node(self, genomes: CppnGenomes, rows: torch.Tensor, generator: torch.Generator) -> None:
        """NEAT's split: j -> i becomes j -> new (weight 1) and new -> i (the old weight)."""
        n = self.num_nodes
        edge, has_edge = _random_pick(genomes.connected[rows].flatten(1), generator)
        order = genomes.order[rows]
        free = torch.zeros_like(order, dtype=torch.bool)
        free[:, self.hidden] = torch.isinf(order[:, self.hidden])
        slot, has_slot = _random_pick(free, generator)
        keep = has_edge & has_slot
        rows, target, source, slot = rows[keep], edge[keep] // n, edge[keep] % n, slot[keep]
        old = genomes.weights[rows, target, source]
        genomes.connected[rows, target, source] = False
        genomes.weights[rows, target, source] = 0.0
        genomes.connected[rows, slot, source] = True
        genomes.weights[rows, slot, source] = 1.0
        genomes.connected[rows, target, slot] = True
        genomes.weights[rows, target, slot] = old
        genomes.order[rows, slot] = (genomes.order[rows, source] + genomes.order[rows, target]) / 2
        genomes.activations[rows, slot] = torch.randint(len(ACTIVATIONS), (len(rows),), generator=generator,
                                                        device=self.device)

    def _add_connection(self, genomes: CppnGenomes, rows: torch.Tensor, generator: torch.Generator) -> None:
        """A new connection between two used nodes, from the smaller key to the larger, where none is."""
        n = self.num_nodes
        order = genomes.order[rows]
        used = torch.isfinite(order)
        allowed = ((order[:, None, :] < order[:, :, None]) & used[:, None, :] & used[:, :, None]
                   & ~genomes.connected[rows])
        edge, has = _random_pick(allowed.flatten(1), generator)
        rows, edge = rows[has], edge[has]
        genomes.connected[rows, edge // n, edge % n] = True
        genomes.weights[rows, edge // n, edge % n] = self._new_weights((len(rows),), generator)

    def _change_activation(self, genomes: CppnGenomes, rows: torch.Tensor, generator: torch.Generator) -> None:
        node, has = _random_pick(self._hidden_used(genomes.order[rows]), generator)
        rows, node = rows[has], node[has]
        # Draw among the other activations, so a change always changes something.
        shift = torch.randint(1, len(ACTIVATIONS), (len(rows),), generator=generator, device=self.device)
        genomes.activations[rows, node] = (genomes.activations[rows, node] + shift) % len(ACTIVATIONS)

    # ---- rendering -----------------------------------------------------------------------------------

    @torch.no_grad()
    def render(self, genomes: CppnGenomes) -> torch.Tensor:
        """Images P x C x H x W in [0, 1]: every genome's graph evaluated on the coordinate grid at once."""
        count, n = len(genomes), self.num_nodes
        channels, height, width = self.image_shape
        values = torch.zeros(count, n, height * width, device=self.device)
        values[:, :NUM_INPUTS] = self.grid
        weights = genomes.weights * genomes.connected
        # Non-input nodes in key order (hidden by key, then outputs, then unused slots); step t evaluates
        # the t-th of every genome, so each node sees all its (smaller-key) sources already computed.
        key = genomes.order[:, NUM_INPUTS:]
        visit = key.argsort(dim=1, stable=True) + NUM_INPUTS
        steps = int(torch.isfinite(key).sum(1).max()) if count else 0
        rows = torch.arange(count, device=self.device)
        is_output = torch.zeros(n, dtype=torch.bool, device=self.device)
        is_output[self.outputs] = True
        for step in range(steps):
            node = visit[:, step]
            pre = torch.bmm(weights[rows, node].unsqueeze(1), values).squeeze(1)  # P x HW
            kind = torch.where(is_output[node], SIGMOID, genomes.activations[rows, node]).unsqueeze(1)
            values[rows, node] = activate(pre, kind)
        return values[:, self.outputs].reshape(count, channels, height, width)


def activate(pre: torch.Tensor, kind: torch.Tensor) -> torch.Tensor:
    """The activation `kind` (broadcast against `pre`, indexes ACTIVATIONS) applied elementwise."""
    out = torch.where(kind == SINE, torch.sin(pre), pre.clamp(-LINEAR_LIMIT, LINEAR_LIMIT))
    out = torch.where(kind == SIGMOID, torch.sigmoid(pre), out)
    return torch.where(kind == GAUSSIAN, torch.exp(-pre.pow(2)), out)


class CppnEvolution(EvolutionMethod):
    """The method: MAP-Elites over CPPN-encoded images (`--attack.method cppn`)."""

    name = "cppn"
    config_class = CppnConfig
    encoding_class = Cppn
