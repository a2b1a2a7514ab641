import math

import pytest
import torch

from ccc_ray.errors import CccError
from ccc_ray.methods.cppn import NUM_INPUTS, Cppn, CppnConfig, coordinate_grid

torch.set_num_threads(1)  # tiny tensors: more threads only contend with other processes

ONLY = {"add_node_rate": 0.0, "delete_node_rate": 0.0, "add_connection_rate": 0.0, "delete_connection_rate": 0.0,
        "change_activation_rate": 0.0, "weight_mutation_rate": 0.0}


def evolved(encoding: Cppn, count: int = 64, generations: int = 30, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    genomes = encoding.initial(count, generator)
    for generation in range(generations):
        genomes = encoding.mutate(genomes, generation, generator)
    return genomes


def reference_render(encoding: Cppn, genomes, index: int) -> torch.Tensor:
    """One genome, node by node in key order, with plain Python: what the batched render must equal."""
    functions = [torch.sin, torch.sigmoid, lambda v: torch.exp(-v * v), lambda v: v.clamp(-50, 50)]
    order, activations = genomes.order[index], genomes.activations[index]
    weights, connected = genomes.weights[index], genomes.connected[index]
    values = {node: encoding.grid[node] for node in range(NUM_INPUTS)}
    outputs = list(range(NUM_INPUTS, NUM_INPUTS + encoding.channels))
    for node in sorted((n for n in range(NUM_INPUTS, encoding.num_nodes) if math.isfinite(order[n])),
                       key=lambda n: float(order[n])):
        pre = torch.zeros_like(encoding.grid[0])
        for source in torch.nonzero(connected[node]).flatten().tolist():
            assert source in values, "a node's sources come before it"
            pre = pre + weights[node, source] * values[source]
        values[node] = torch.sigmoid(pre) if node in outputs else functions[int(activations[node])](pre)
    return torch.stack([values[node] for node in outputs]).reshape(encoding.image_shape)


def test_coordinate_grid_holds_x_y_distance_and_bias():
    grid = coordinate_grid(5, 7)
    assert grid.shape == (4, 35)
    x, y, distance, bias = grid.reshape(4, 5, 7)
    assert x[0, 0] == -1 and x[0, -1] == 1 and y[0, 0] == -1 and y[-1, 0] == 1
    assert distance[2, 3] == pytest.approx(0, abs=1e-6) and distance[0, 0] == pytest.approx(math.sqrt(2))
    assert (bias == 1).all()


@pytest.mark.parametrize("shape", [(1, 8, 8), (3, 12, 16)])
def test_render_gives_one_image_per_genome_in_range(shape):
    encoding = Cppn(CppnConfig(), shape)
    genomes = evolved(encoding, count=40)
    images = encoding.render(genomes)
    assert images.shape == (40, *shape) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    assert images.flatten(1).std(1).max() > 0.05  # patterns, not flat grey
    assert len({image.numpy().tobytes() for image in images}) > 30  # individuals differ


def test_batched_render_equals_node_by_node_evaluation():
    encoding = Cppn(CppnConfig(), (3, 6, 5))
    genomes = evolved(encoding, count=24, generations=40)
    assert genomes.hidden_counts.max() >= 5  # deep enough graphs to exercise the ordering
    images = encoding.render(genomes)
    for index in range(len(genomes)):
        torch.testing.assert_close(images[index], reference_render(encoding, genomes, index), rtol=1e-5, atol=1e-5)


def test_initial_genomes_have_no_hidden_nodes_and_connect_inputs_to_outputs():
    encoding = Cppn(CppnConfig(), (3, 8, 8))
    genomes = encoding.initial(10, torch.Generator().manual_seed(0))
    assert (genomes.hidden_counts == 0).all()
    assert (genomes.connection_counts == NUM_INPUTS * 3).all()
    assert (genomes.weights.abs() <= 1).all()


def test_add_node_splits_a_connection():
    encoding = Cppn(CppnConfig(**{**ONLY, "add_node_rate": 1.0}), (1, 8, 8))
    generator = torch.Generator().manual_seed(0)
    parents = encoding.initial(20, generator)
    children = encoding.mutate(parents, 1, generator)
    assert (children.hidden_counts == 1).all()
    assert (children.connection_counts == parents.connection_counts + 1).all()  # one removed, two added
    new = children.order[:, encoding.hidden]
    assert ((new[torch.isfinite(new)] > 0) & (new[torch.isfinite(new)] < 1)).all()
    # NEAT's split: j -> i becomes j -> new with weight 1 and new -> i with the old weight.
    for parent, child in zip(parents, children):
        (new,) = torch.nonzero(torch.isfinite(child.order[encoding.hidden])).flatten() + encoding.hidden.start
        ((source,),) = torch.nonzero(child.connected[new]).tolist()
        ((target,),) = torch.nonzero(child.connected[:, new]).tolist()
        assert parent.connected[target, source] and not child.connected[target, source]
        assert child.weights[new, source] == 1 and child.weights[target, new] == parent.weights[target, source]


def test_add_and_delete_connection_and_node_change_the_structure():
    generator = torch.Generator().manual_seed(1)
    grown = evolved(Cppn(CppnConfig(), (1, 8, 8)), count=30, generations=20)
    add = Cppn(CppnConfig(**{**ONLY, "add_connection_rate": 1.0}), (1, 8, 8))
    added = add.mutate(grown, 1, generator)
    assert (added.connection_counts >= grown.connection_counts).all()
    assert (added.connection_counts > grown.connection_counts).float().mean() > 0.9
    delete = Cppn(CppnConfig(**{**ONLY, "delete_connection_rate": 1.0}), (1, 8, 8))
    assert (delete.mutate(grown, 1, generator).connection_counts == grown.connection_counts - 1).all()
    drop = Cppn(CppnConfig(**{**ONLY, "delete_node_rate": 1.0}), (1, 8, 8))
    dropped = drop.mutate(grown, 1, generator)
    assert (dropped.hidden_counts == (grown.hidden_counts - 1).clamp(min=0)).all()
    gone = torch.isinf(dropped.order)
    assert not dropped.connected[gone].any()  # a deleted node keeps no outgoing ...
    assert not dropped.connected.transpose(1, 2)[gone].any()  # ... and no incoming connection


def test_change_activation_changes_exactly_one_hidden_node():
    grown = evolved(Cppn(CppnConfig(), (1, 8, 8)), count=30, generations=20)
    change = Cppn(CppnConfig(**{**ONLY, "change_activation_rate": 1.0}), (1, 8, 8))
    changed = change.mutate(grown, 1, torch.Generator().manual_seed(2))
    differs = (changed.activations != grown.activations).sum(1)
    assert torch.equal(differs, (grown.hidden_counts > 0).long())
    assert torch.equal(changed.connected, grown.connected)


def test_weight_mutation_perturbs_existing_weights_within_range():
    config = CppnConfig(**{**ONLY, "weight_mutation_rate": 1.0})
    encoding = Cppn(config, (1, 8, 8))
    generator = torch.Generator().manual_seed(3)
    genomes = encoding.initial(20, generator)
    for generation in range(100):
        children = encoding.mutate(genomes, generation, generator)
        assert torch.equal(children.connected, genomes.connected)
        genomes = children
    assert genomes.weights.abs().max() <= 10 and genomes.weights.abs().max() > 1  # drifted past the start
    assert (genomes.weights[~genomes.connected] == 0).all()


def test_graphs_stay_acyclic_and_within_capacity():
    encoding = Cppn(CppnConfig(max_hidden=3, add_node_rate=1.0, delete_node_rate=0.0), (1, 8, 8))
    genomes = evolved(encoding, count=40, generations=60)
    assert genomes.hidden_counts.max() == 3
    source_key = genomes.order[:, None, :].expand_as(genomes.connected)[genomes.connected]
    target_key = genomes.order[:, :, None].expand_as(genomes.connected)[genomes.connected]
    assert (source_key < target_key).all()
    assert not genomes.connected[:, :NUM_INPUTS].any()  # inputs have no incoming connections
    encoding.render(genomes)


def test_genomes_index_and_assign_like_a_tensor():
    encoding = Cppn(CppnConfig(), (1, 8, 8))
    genomes = evolved(encoding, count=10)
    picked = genomes[torch.tensor([3, 3, 7])]
    assert len(picked) == 3 and torch.equal(picked.weights[0], genomes.weights[3])
    target = encoding.initial(10, torch.Generator().manual_seed(9))
    target[torch.tensor([0, 5])] = genomes[torch.tensor([1, 2])]
    assert torch.equal(encoding.render(target[torch.tensor([0, 5])]), encoding.render(genomes[torch.tensor([1, 2])]))


def test_same_seed_same_genomes_and_images():
    encoding = Cppn(CppnConfig(), (1, 8, 8))
    assert torch.equal(encoding.render(evolved(encoding, seed=4)), encoding.render(evolved(encoding, seed=4)))
    assert not torch.equal(encoding.render(evolved(encoding, seed=4)), encoding.render(evolved(encoding, seed=5)))


@pytest.mark.parametrize("field, value", [("add_node_rate", 1.5), ("delete_connection_rate", -0.1),
                                          ("weight_mutation_rate", 2.0), ("max_hidden", -1),
                                          ("weight_range", 0.0), ("initial_weight_range", 20.0),
                                          ("distribution_index", -1.0)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(CccError, match=field):
        Cppn(CppnConfig(**{field: value}), (1, 8, 8))
