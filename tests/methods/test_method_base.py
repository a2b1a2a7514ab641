"""The method interface's training streams (`ccc_ray/methods/base.py`): what every training loop draws from."""

import itertools

import torch

from ccc_ray.methods import real_batches, real_data_loader


def test_the_ranks_of_two_workers_see_between_them_the_one_worker_batch_of_every_step():
    data = torch.utils.data.TensorDataset(torch.arange(101).float(), torch.arange(101))
    steps = 12  # three epochs of 4 batches: the order is reshuffled per epoch, and a resumed stream follows it
    one = [batch[1] for batch in itertools.islice(real_batches(*real_data_loader("m", data, 24, seed=5), 0), steps)]
    ranks = [[batch[1] for batch in itertools.islice(real_batches(*real_data_loader("m", data, 12, 5, rank, 2), 0),
                                                     steps)] for rank in (0, 1)]
    for step in range(steps):
        assert sorted(torch.cat([ranks[0][step], ranks[1][step]]).tolist()) == sorted(one[step].tolist())
    assert one[4].tolist() != one[0].tolist()
    resumed = [batch[1] for batch in itertools.islice(real_batches(*real_data_loader("m", data, 24, 5), 5), 3)]
    assert [batch.tolist() for batch in resumed] == [batch.tolist() for batch in one[5:8]]
