"""The scorecard without Ray: families that apply, budgets, the deployed threshold, and judging."""

from __future__ import annotations

import pytest
import torch

from ccc_ray.classifiers.weights import load_classifier
from ccc_ray.counterfeits.far import FarFromData, FarRule
from ccc_ray.counterfeits.judge import CONFIRMED, FAR, WRONG, NearestVote
from ccc_ray.counterfeits.scorecard import (
    DeployedThreshold,
    FamilyAttack,
    ScorecardSettings,
    deployed_threshold,
    family_config,
    judge_family,
    run_scorecard,
    scorecard_families,
)
from ccc_ray.counterfeits.search import load_target
from ccc_ray.errors import CccError
from ccc_ray.export.onnx_export import export_onnx
from ccc_ray.methods import METHODS
from ccc_ray.methods.cppn import CppnConfig
from ccc_ray.methods.gradient_ascent import GradientAscentConfig
from ccc_ray.methods.inversion import InversionConfig
from ccc_ray.methods.real_pgd import RealPgdConfig
from ccc_ray.methods.real_square import RealSquareConfig
from ccc_ray.ood.scores import ood_score

torch.set_num_threads(1)

TINY = ScorecardSettings(per_class=1, generator_steps=3, generations=2)
CONFIGS = {"inversion": InversionConfig(batch_size=20), "gradient_ascent": GradientAscentConfig(steps=5),
           "real_pgd": RealPgdConfig(restarts=1, steps=10), "real_square": RealSquareConfig(queries=50)}


@pytest.fixture(scope="module")
def far(digits):
    return FarFromData.fit(FarRule(), digits.train_images, digits.test_images)


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory, digits_classifier_file):
    model, info = load_classifier(digits_classifier_file)
    path = tmp_path_factory.mktemp("onnx") / "classifier.onnx"
    export_onnx(model, path, list(info.class_names), info.image_shape, "max_softmax", 0.42)
    return path


@pytest.fixture(scope="module")
def nearest(digits):
    return NearestVote(digits.train_images, digits.train_labels, digits.num_classes, 3)


def test_every_family_runs_white_box_at_its_budget_and_is_judged(digits, digits_classifier_file, far, nearest):
    target, model = load_target(digits_classifier_file, None, digits, None)
    card = run_scorecard(target, model, digits, TINY, CONFIGS, far, 0.99, [nearest])
    rows = {row.family: row for row in card.families}
    assert set(rows) == {name for name, cls in METHODS.items() if cls.kind in ("generator", "search")}
    assert card.decision.source == "test split" and card.decision.score == "max_softmax"
    for row in rows.values():
        assert row.samples == digits.num_classes  # per_class 1
        assert row.successes <= row.confident_and_accepted <= min(row.confident, row.accepted)
        assert row.far_successes <= row.successes <= row.far_successes + row.confident_and_accepted
        assert row.successes == row.judges["nearest"]["successes"] and row.evaluations > 0 and row.seconds > 0
        assert 0 <= row.confirmed_share <= 1 and len(row.verdicts) == row.samples
    assert rows["inversion"].budget["steps"] == 3 and rows["cppn"].budget["max_generations"] == 2
    assert rows["gradient_ascent"].budget["steps"] == 5  # no scorecard override: its own section
    assert rows["inversion"].evaluations >= 3 * 20  # every training pass counts


def test_an_onnx_file_is_a_black_box_with_its_metadata_threshold(digits, onnx_file):
    target, model = load_target(None, str(onnx_file), digits, None, "scorecard.model")
    assert scorecard_families([], target) == [n for n, c in METHODS.items() if c.kind == "search" and c.black_box]
    decision = deployed_threshold(target, model, digits)
    assert (decision.score, decision.ood_threshold, decision.source) == ("max_softmax", 0.42, "ONNX metadata")
    with pytest.raises(CccError, match="gradient_ascent needs gradients"):
        scorecard_families(["gradient_ascent"], target)
    with pytest.raises(CccError, match="unknown generator or search method 'nope'"):
        scorecard_families(["nope"], target)


def test_budgets_apply_to_trained_and_evolution_families_only():
    assert family_config(InversionConfig(), TINY).steps == 3
    assert family_config(CppnConfig(), TINY).max_generations == 2
    assert family_config(GradientAscentConfig(), TINY) == GradientAscentConfig()
    assert family_config(CppnConfig(), ScorecardSettings(generations=0)).max_generations == CppnConfig().max_generations


def test_a_budget_scale_multiplies_each_familys_own_budget_field():
    assert family_config(InversionConfig(), TINY, METHODS["inversion"], 10).steps == 30
    assert family_config(CppnConfig(), TINY, METHODS["cppn"], 10).max_generations == 20
    assert family_config(GradientAscentConfig(), TINY, METHODS["gradient_ascent"], 10).steps == 3000
    assert family_config(CppnConfig(), TINY, METHODS["cppn"], 10).population_size == CppnConfig().population_size
    with pytest.raises(CccError, match="budget_scales"):
        from ccc_ray.job import load_job
        load_job(None, {"scorecard.budget_scales": [1, 0.5]})


def test_a_card_has_one_row_per_family_and_budget(digits, digits_classifier_file, far, nearest):
    target, model = load_target(digits_classifier_file, None, digits, None)
    settings = ScorecardSettings(per_class=1, generations=2, families=["direct_encoding"], budget_scales=[1, 3])
    rows = run_scorecard(target, model, digits, settings, {}, far, 0.99, [nearest]).families
    assert [(row.family, row.budget_scale, row.budget["max_generations"]) for row in rows] == [
        ("direct_encoding", 1, 2), ("direct_encoding", 3, 6)]
    assert rows[1].evaluations > rows[0].evaluations


class AlwaysSays:
    """A model that answers one class with certainty, whatever the image: it fools itself on everything."""

    def __init__(self, answer: int, classes: int):
        self.answer, self.classes = answer, classes

    def __call__(self, images):
        logits = torch.zeros(len(images), self.classes)
        logits[:, self.answer] = 20.0
        return logits


def test_near_samples_count_only_where_the_judge_names_another_class(digits, far, nearest):
    model = AlwaysSays(3, digits.num_classes)
    images = (digits.test_images[:60] * 255).round().to(torch.uint8)
    targets = torch.full((60,), 3)
    noise = torch.randint(0, 256, (5, *digits.image_shape), generator=torch.Generator().manual_seed(0),
                          dtype=torch.uint8)
    attack = FamilyAttack("real", "search", True, torch.cat([images, noise]), torch.cat([targets, torch.full((5,), 3)]),
                          65, 1.0, {}, evaluations_to_bar=torch.arange(65))
    decision = DeployedThreshold("max_softmax", False, 0.5, 0.1, "test")
    row = judge_family(attack, model, decision, far, 0.99, [nearest])
    labels = digits.test_labels[:60]
    named = nearest.classify(images)
    is_far = far.is_far(images)
    # Real digits that are not 3s, near the data, named so by the judge: the model is confidently wrong on them.
    expected_wrong = int((~is_far & (named != 3)).sum())
    assert expected_wrong >= int((labels != 3).sum()) - 5
    assert row.judges["nearest"]["wrong"] == expected_wrong
    assert row.judges["nearest"]["confirmed"] == int((~is_far & (named == 3)).sum()) >= 1
    assert row.far_successes == int(is_far.sum()) + 5  # the noise is far
    assert row.successes == expected_wrong + row.far_successes
    assert row.verdicts[60:] == [FAR] * 5
    assert {row.verdicts[i] for i in range(60) if labels[i] == 3 and not is_far[i]} == {CONFIRMED}
    assert WRONG in row.verdicts
    assert row.evaluations_to_first_success == min(i for i, v in enumerate(row.verdicts) if v in (FAR, WRONG))


def test_real_digits_the_model_gets_right_are_confirmed_not_successes(digits, digits_classifier_file, far, nearest):
    target, model = load_target(digits_classifier_file, None, digits, None)
    decision = deployed_threshold(target, model, digits)
    # Real test digits the model gets right: confident and accepted mostly, but near the data.
    images = (digits.test_images[:40] * 255).round().to(torch.uint8)
    attack = FamilyAttack("real", "search", True, images, digits.test_labels[:40], 40, 1.0, {})
    row = judge_family(attack, model, decision, far, 0.5, [nearest])
    assert row.confident_and_accepted > 30 and row.successes <= row.far + 1 <= 6
    assert row.confirmed_share > 0.8
    strict = DeployedThreshold(decision.score, False, 2.0, decision.scale, "test")  # max_softmax never >= 2
    assert judge_family(attack, model, strict, far, 0.5, [nearest]).successes == 0


def test_the_threshold_of_a_torch_file_accepts_95_percent_of_the_test_split(digits, digits_classifier_file):
    target, model = load_target(digits_classifier_file, None, digits, None)
    decision = deployed_threshold(target, model, digits, "max_logit")
    scores = ood_score("max_logit", model(digits.test_images).detach())
    assert float((scores >= decision.ood_threshold).double().mean()) >= 0.95
    with pytest.raises(CccError, match="not_reject needs a model with a reject class"):
        deployed_threshold(target, model, digits, "not_reject")
