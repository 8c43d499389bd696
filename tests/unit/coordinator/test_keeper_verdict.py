"""Which checkpoints the keeper refuses to adopt (essaim.coordinator.keeper.degraded)."""

from __future__ import annotations

import math

from essaim.coordinator.keeper import degraded
from essaim.swarm.evaluate import EvalResult


def _em(value: float, loss: float) -> EvalResult:
    return EvalResult(metric="exact_match", value=value, samples=100, loss=loss)


def test_a_model_wrecked_while_its_accuracy_is_still_zero_is_refused() -> None:
    # early in a job exact match is 0 before and after: the answers' loss tells
    assert degraded(_em(0.0, 3.2), best_value=0.0, best_loss=3.4) == ""
    assert "eval loss rose from 3.400 to 41.000" in degraded(_em(0.0, 41.0), best_value=0.0, best_loss=3.4)


def test_not_a_number_is_refused() -> None:
    assert "not a number" in degraded(_em(0.0, math.nan), best_value=None, best_loss=None)
    assert "not a number" in degraded(_em(math.nan, 1.0), best_value=None, best_loss=None)
    inf = EvalResult(metric="loss", value=math.inf, samples=4, loss=math.inf)
    assert "loss is not a number" in degraded(inf, best_value=2.0, best_loss=2.0)


def test_accuracy_halved_from_a_meaningful_level_is_refused_and_noise_is_not() -> None:
    assert "exact match fell from 0.600 to 0.200" in degraded(_em(0.2, 1.0), best_value=0.6, best_loss=1.0)
    assert degraded(_em(0.45, 1.1), best_value=0.6, best_loss=1.0) == ""  # an honest dip
    assert degraded(_em(0.0, 2.0), best_value=0.1, best_loss=1.9) == ""  # 0.1 is not yet a level to fall from


def test_a_loss_metric_may_wander_but_not_jump() -> None:
    loss = EvalResult(metric="loss", value=2.3, samples=4, loss=2.3)
    assert degraded(loss, best_value=2.0, best_loss=2.0) == ""
    # an honest swarm's answers' loss rose by 1.1 nats between two checkpoints of the demo job
    bump = EvalResult(metric="exact_match", value=0.0, samples=100, loss=3.87)
    assert degraded(bump, best_value=0.0, best_loss=2.77) == ""
    jump = EvalResult(metric="perplexity", value=math.exp(4.5), samples=4, loss=4.5)
    assert "rose from 2.000 to 4.500" in degraded(jump, best_value=math.exp(2.0), best_loss=2.0)
