"""The attacker's objective against the deployed decision: confident only where the OOD score accepts."""

from __future__ import annotations

import pytest
import torch

from ccc_ray.counterfeits.deployed_decision import DeployedDecision
from ccc_ray.errors import CccError
from ccc_ray.ood.scores import ood_score

BAR = 0.99


def identity(logits: torch.Tensor) -> torch.Tensor:
    """A 'classifier' whose images are its logits (N x W x 1 x 1), so every case is written down exactly."""
    return logits.flatten(1)


def wrapped_confidence(logits, score, reject, threshold):
    decision = DeployedDecision(identity, score, reject, threshold, BAR, scale=0.05)
    return decision(logits[:, :, None, None]).softmax(dim=1)


def test_the_bar_is_met_exactly_when_confident_and_accepted():
    # reject-class model, not_reject score, threshold 0.999: p(reject) must stay <= 0.001.
    logits = torch.tensor([[12.0, 0.0, 0.0, 0.0],    # confident, tiny reject: accepted -> passes
                           [12.0, 0.0, 0.0, 6.5],    # confident (>= 0.99) but p(reject) ~ 0.004: rejected
                           [2.0, 1.5, 0.0, -9.0]])   # accepted but not confident
    probabilities = logits.softmax(dim=1)
    accepted = ood_score("not_reject", logits, True) >= 0.999
    confident = probabilities[:, 0] >= BAR
    wrapped = wrapped_confidence(logits, "not_reject", True, 0.999)
    assert wrapped.shape == (3, 5)  # the model's 4 outputs and "not accepted"
    assert torch.equal(wrapped[:, 0] >= BAR, confident & accepted)
    assert confident[1] and not accepted[1] and wrapped[1, 0] < BAR
    torch.testing.assert_close(wrapped.sum(dim=1), torch.ones(3))
    assert torch.all(wrapped[:, :4] <= probabilities + 1e-6)  # the wrapper never adds confidence


def test_at_the_threshold_the_gate_equals_the_bar():
    logits = torch.tensor([[20.0, 0.0, 0.0]])
    threshold = float(ood_score("max_logit", logits))
    wrapped = wrapped_confidence(logits, "max_logit", False, threshold)
    torch.testing.assert_close(wrapped[0, 0], torch.tensor(BAR))


def test_gradients_reach_the_image_through_class_and_margin():
    logits = torch.tensor([[6.0, 0.0, 0.0, 4.0]], requires_grad=True)
    wrapped = DeployedDecision(identity, "not_reject", True, 0.999, BAR, 0.05)(logits[:, :, None, None])
    wrapped.log_softmax(dim=1)[0, 0].backward()
    assert logits.grad[0, 3] < 0  # lowering the reject logit raises the target's wrapped confidence


def test_bad_settings_are_one_ccc_error():
    with pytest.raises(CccError, match="confidence bar"):
        DeployedDecision(identity, "max_softmax", False, 0.5, 1.0, 0.1)
    with pytest.raises(CccError, match="positive score scale"):
        DeployedDecision(identity, "max_softmax", False, 0.5, 0.99, 0.0)


def test_a_search_against_the_wrapper_stops_only_where_the_deployed_model_is_fooled(digits, digits_classifier_file):
    """MAP-Elites against a reject-class model through the wrapper: whatever it reports as at the bar is
    confident AND accepted by the model itself, although the reject output takes a share of every image."""
    from ccc_ray.classifiers.weights import load_classifier
    from ccc_ray.counterfeits.keep import score_as_stored
    from ccc_ray.counterfeits.search import AttackRun, build_search, search_run
    from ccc_ray.classifiers.widen import widen_classifier
    from ccc_ray.methods.direct_encoding import DirectEncodingConfig, DirectEncodingEvolution

    torch.set_num_threads(1)
    baseline, _ = load_classifier(digits_classifier_file)
    model = widen_classifier(baseline, digits.image_shape).eval().requires_grad_(False)
    with torch.no_grad():
        model.head.bias[-1] = 2.0  # the reject output claims a share of every image
    threshold = 0.995
    decision = DeployedDecision(model, "not_reject", True, threshold, 0.9, scale=0.01)
    search = build_search(DirectEncodingEvolution, DirectEncodingConfig(population_size=50, max_generations=30),
                          decision, digits.num_classes + 2, digits.image_shape, 0.9)
    result = search_run(search, AttackRun(0, 0, tuple(range(digits.num_classes)), seed=1))
    reached = torch.from_numpy(result.generations >= 0)
    stored = torch.from_numpy(result.images).permute(0, 3, 1, 2)
    scored = score_as_stored(stored, torch.arange(digits.num_classes), model, 0.9)
    accepted = ood_score("not_reject", scored.logits, True) >= threshold
    assert torch.equal(reached, scored.kept & accepted)
    assert (scored.kept & ~accepted).any()  # a champion the plain search would have stopped on: not reported
