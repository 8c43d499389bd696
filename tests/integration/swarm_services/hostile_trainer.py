"""A volunteer's trainer that attacks its averaging rounds: the real trainer
(``python -m essaim.client.trainer``, same arguments) with what it sends altered.

    ESSAIM_TEST_ATTACKS=scale,nan python hostile_trainer.py --assignment ... (the trainer's own options)

Each round it sends the next attack of ``ESSAIM_TEST_ATTACKS`` in turn: ``scale`` multiplies its
update by 1000, ``nan`` sends NaN, ``sign`` sends its update negated and x10, ``noise`` sends
random noise of its update's norm, ``zero`` sends nothing of value while claiming 100x its samples
as its weight. It trains honestly otherwise, so it stays in the swarm. Used by the tests and by
``bench/adversary.py``.
"""

from __future__ import annotations

import itertools
import os
import sys

import torch
from essaim.swarm import optimizer


def main() -> int:
    attacks = itertools.cycle([a.strip() for a in os.environ["ESSAIM_TEST_ATTACKS"].split(",") if a.strip()])
    honest_load = optimizer.PseudoGradientAverager.load_accumulators_into_averager_
    honest_step = optimizer._GradAverager.step
    state = {"attack": ""}

    @torch.no_grad()
    def load(self: optimizer.PseudoGradientAverager) -> None:
        honest_load(self)
        attack = state["attack"] = next(attacks)
        with self.get_tensors() as sent:
            for t in sent:
                if attack == "scale":
                    t.mul_(1000)
                elif attack == "nan":
                    t.fill_(float("nan"))
                elif attack == "sign":
                    t.mul_(-10)
                elif attack == "noise":  # random, of the update's norm
                    norm = t.norm()
                    t.normal_().mul_(norm / t.norm().clamp(min=1e-30))
                elif attack == "zero":
                    t.zero_()
        print(f"hostile trainer: this round's attack: {attack}", file=sys.stderr, flush=True)

    def step(self: optimizer._GradAverager, weight: float | None = None, **kwargs: object) -> object:
        if state["attack"] == "zero":
            weight = 100.0 * max(float(self.local_samples_accumulated), 1.0)
        return honest_step(self, weight=weight, **kwargs)

    optimizer.PseudoGradientAverager.load_accumulators_into_averager_ = load  # type: ignore[method-assign]
    optimizer._GradAverager.step = step  # type: ignore[method-assign]
    from essaim.client.trainer import main as trainer_main

    return trainer_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
