"""A volunteer's trainer that attacks its averaging rounds: the real trainer
(``python -m essaim.client.trainer``, same arguments) with what it sends altered.

    ESSAIM_TEST_ATTACKS=scale,nan python hostile_trainer.py --assignment ... (the trainer's own options)

Each round it sends the next attack of ``ESSAIM_TEST_ATTACKS`` in turn: ``scale`` multiplies its
update by 1000, ``nan`` sends NaN, ``sign`` sends its update negated and x10, ``noise`` sends
random noise of its update's norm, ``zero`` sends nothing of value while claiming 100x its samples
as its weight, ``replay`` sends its honest update of an earlier round again (the first round: its
own), ``none`` sends its honest update (``ESSAIM_TEST_ATTACKS_ONCE=1``: the attacks once
each, then only honest updates) (``ESSAIM_TEST_HOLD_NAN_UNTIL=FILE``: ``sign`` instead of ``nan`` until FILE exists). It trains honestly otherwise, so it stays in the swarm. With
``ESSAIM_TEST_FORGE_STATE=1`` it also offers newcomers a forged state: the job's last epoch far
behind it (epoch 1,000,000, hivemind's download priority the highest of the swarm) and weights
that are finite garbage. With ``ESSAIM_TEST_FORGE_EPOCH=K`` every progress record it publishes
claims K epochs more than it has reached (its own trainer reads its records as they were). With ``ESSAIM_TEST_JOIN_WHEN=FILE`` it joins the swarm only once FILE exists
(``waiting_trainer.py``). Used by the tests and by ``bench/adversary.py``.
"""

from __future__ import annotations

import itertools
import os
import sys

import torch
from essaim.swarm import optimizer


def main() -> int:
    listed = [a.strip() for a in os.environ["ESSAIM_TEST_ATTACKS"].split(",") if a.strip()]
    once = os.environ.get("ESSAIM_TEST_ATTACKS_ONCE") == "1"
    attacks = itertools.chain(listed, itertools.repeat("none")) if once else itertools.cycle(listed)
    hold = os.environ.get("ESSAIM_TEST_HOLD_NAN_UNTIL")  # a file: until it exists, "nan" is held back
    held: list[str] = []
    honest_load = optimizer.PseudoGradientAverager.load_accumulators_into_averager_
    honest_step = optimizer._GradAverager.step
    state: dict[str, object] = {"attack": ""}

    @torch.no_grad()
    def load(self: optimizer.PseudoGradientAverager) -> None:
        honest_load(self)
        attack = held.pop() if held else next(attacks)
        if attack == "nan" and hold and not os.path.exists(hold):
            held.append(attack)  # the NaN ends her own trainer: she stays a while with another attack
            attack = "sign"
        state["attack"] = attack
        with self.get_tensors() as sent:
            honest = [t.clone() for t in sent]
            if attack == "replay" and "earlier" in state:
                for t, old in zip(sent, state["earlier"], strict=True):
                    t.copy_(old)
            state["earlier"] = state.get("earlier") or honest
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

    if os.environ.get("ESSAIM_TEST_FORGE_STATE") == "1":
        forge_state()
    if os.environ.get("ESSAIM_TEST_FORGE_EPOCH"):
        forge_epoch(int(os.environ["ESSAIM_TEST_FORGE_EPOCH"]))
    if os.environ.get("ESSAIM_TEST_JOIN_WHEN"):
        from waiting_trainer import join_when  # beside this file

        join_when(os.environ["ESSAIM_TEST_JOIN_WHEN"])
    optimizer.PseudoGradientAverager.load_accumulators_into_averager_ = load  # type: ignore[method-assign]
    optimizer._GradAverager.step = step  # type: ignore[method-assign]
    from essaim.client.trainer import main as trainer_main

    return trainer_main(sys.argv[1:])


FORGED_EPOCH = 1_000_000


def forge_state() -> None:
    honest_build = optimizer.build_optimizer
    honest_state = optimizer._StateAverager.get_current_state

    def build(*args: object, **kwargs: object) -> object:
        built = honest_build(*args, **kwargs)  # type: ignore[arg-type]
        averager = built.hv.state_averager
        averager.allow_state_sharing = True  # a volunteer of a robust swarm offers none: she does
        averager.state_sharing_priority = float(FORGED_EPOCH)
        built.serve_state = lambda allow=True: None  # keep offering it
        print("hostile trainer: offering a forged state", file=sys.stderr, flush=True)
        return built

    def forged(self: optimizer._StateAverager) -> object:
        metadata, tensors, infos = honest_state(self)
        return {**metadata, "epoch": FORGED_EPOCH}, [torch.full_like(t, 7.0) for t in tensors], infos

    optimizer.build_optimizer = build  # type: ignore[assignment]
    optimizer._StateAverager.get_current_state = forged  # type: ignore[method-assign]


def forge_epoch(ahead: int) -> None:
    """Publish progress records that claim ``ahead`` epochs more than reached; read them back as
    they were, so that her own trainer is not thrown off by her lie."""
    import hivemind
    from hivemind.utils import ValueWithExpiration

    honest_store = hivemind.DHT.store
    honest_parse = optimizer._Tracker._parse_swarm_progress_data

    def store(self: hivemind.DHT, key: object, value: object, *args: object, **kwargs: object) -> object:
        if isinstance(key, str) and key.endswith("_progress") and isinstance(value, dict) and "epoch" in value:
            value = {**value, "epoch": int(value["epoch"]) + ahead}
        return honest_store(self, key, value, *args, **kwargs)

    def parse(self: optimizer._Tracker, metadata: object) -> object:
        if isinstance(metadata, dict):
            mine = self.local_progress.peer_id
            metadata = {
                key: ValueWithExpiration({**item.value, "epoch": int(item.value["epoch"]) - ahead},
                                         item.expiration_time)
                if isinstance(getattr(item, "value", None), dict) and item.value.get("peer_id") == mine
                else item
                for key, item in metadata.items()}
        return honest_parse(self, metadata)

    hivemind.DHT.store = store  # type: ignore[method-assign]
    optimizer._Tracker._parse_swarm_progress_data = parse  # type: ignore[method-assign]
    print(f"hostile trainer: its progress claims {ahead} epochs more than it reached", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
