import math

import pytest
import torch

from ccc_ray.errors import CccError
from ccc_ray.ood.scores import (OOD_SCORES, inversion_certainty, inversion_uncertainty, max_logit, max_softmax,
                                negative_energy, not_reject, ood_score)

torch.set_num_threads(1)


def test_known_values():
    logits = torch.tensor([[0.0, 0.0], [2.0, -1.0]])
    assert torch.allclose(max_softmax(logits), torch.tensor([0.5, 1 / (1 + math.exp(-3))]))
    assert torch.equal(max_logit(logits), torch.tensor([0.0, 2.0]))
    assert torch.allclose(negative_energy(logits), torch.logsumexp(logits, dim=1))
    assert torch.allclose(negative_energy(torch.zeros(1, 2), temperature=2.0), torch.tensor([2 * math.log(2)]))


def test_confident_logits_score_higher_than_flat_ones_for_every_score():
    confident = torch.tensor([[8.0, 0.0, 0.0, -4.0]])
    flat = torch.tensor([[0.5, 0.4, 0.5, -4.0]])
    for name in OOD_SCORES:
        reject = name == "not_reject"  # there the last column is the reject output, low in both rows
        assert ood_score(name, confident, reject_class=reject) > ood_score(name, flat, reject_class=reject), name


def test_reject_class_scores_use_only_the_first_k_logits():
    classes = torch.tensor([[3.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    with_reject = torch.cat([classes, torch.tensor([[50.0], [-50.0]])], dim=1)
    for score in (max_softmax, max_logit, negative_energy, inversion_certainty):
        assert torch.allclose(score(with_reject, reject_class=True), score(classes)), score.__name__
    # Read as K + 1 plain classes, the huge reject logit would dominate the energy.
    assert negative_energy(with_reject)[0] > 49


def test_not_reject_is_one_minus_reject_probability():
    logits = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, math.log(8.0)]])
    assert torch.allclose(not_reject(logits), torch.tensor([2 / 3, 0.2]))
    with pytest.raises(CccError, match="reject class"):
        not_reject(logits, reject_class=False)


def test_inversion_uncertainty_matches_the_paper_formula():
    assert torch.allclose(inversion_uncertainty(torch.eye(4)), torch.zeros(4))
    assert torch.allclose(inversion_uncertainty(torch.full((1, 5), 0.2)), torch.ones(1))
    probs = torch.softmax(torch.randn(6, 5, generator=torch.Generator().manual_seed(0)), dim=1)
    m = probs.shape[1]
    delta = torch.nn.functional.one_hot(probs.argmax(dim=1), m).float()
    expected = 1 - ((probs - 1 / m) ** 2).sum(1) / ((delta - 1 / m) ** 2).sum(1)
    assert torch.allclose(inversion_uncertainty(probs), expected, atol=1e-6)
    assert torch.allclose(inversion_certainty(probs.log()), 1 - expected, atol=1e-6)


def test_scores_return_one_value_per_row_and_reject_bad_shapes():
    logits = torch.randn(7, 4)
    for name in OOD_SCORES:
        assert ood_score(name, logits, reject_class=name == "not_reject").shape == (7,)
    with pytest.raises(CccError, match="N x K"):
        max_softmax(torch.randn(7))
    with pytest.raises(CccError, match="K \\+ 1"):
        max_softmax(torch.randn(3, 2), reject_class=True)
    with pytest.raises(CccError, match="not known"):
        ood_score("odin", logits)
    with pytest.raises(CccError, match="temperature"):
        negative_energy(logits, temperature=0.0)
