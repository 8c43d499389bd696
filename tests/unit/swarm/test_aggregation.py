"""Robust aggregation (essaim.swarm.aggregation): what one dishonest member can do to a round."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import torch
from essaim.swarm.aggregation import (
    CLIP_MULTIPLE,
    HISTORY_MULTIPLE,
    NAMED_AT_ONCE_KEPT,
    SUSPECT_KEPT,
    Gathered,
    NormHistory,
    RobustPartReducer,
    Verdict,
    capped_weights,
    cosines_with_median,
    far_against,
    group_norm,
    mark_repeats,
    part_problem,
    robust_mean,
    suspects,
    weighted_median,
)

D = 4096


def _honest(n: int, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """n updates around one true direction, each with noise of a third of its norm."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.randn(D, generator=g)
    return truth, [truth + torch.randn(D, generator=g) / 3 for _ in range(n)]


def _mean(parts: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    w = torch.tensor(weights)
    return (torch.stack(parts) * w[:, None]).sum(0) / w.sum()


def test_an_honest_group_is_averaged_as_by_the_mean() -> None:
    _, parts = _honest(5)
    weights = [100.0, 120.0, 90.0, 110.0, 100.0]
    robust, kept = robust_mean(parts, weights)
    mean = _mean(parts, weights)
    assert torch.dist(robust, mean) < 0.02 * mean.norm()
    assert min(kept) > 0.9


@pytest.mark.parametrize("attack", ["scale", "sign", "noise"])
def test_one_attacker_moves_the_result_by_a_bounded_amount(attack: str) -> None:
    truth, parts = _honest(4, seed=1)
    honest_mean = _mean(parts, [1.0] * 4)
    bad = {"scale": parts[0] * 1000, "sign": -parts[0] * 10,
           "noise": torch.randn(D, generator=torch.Generator().manual_seed(9)) * parts[0].norm() * 10}[attack]
    robust, kept = robust_mean([*parts, bad], [1.0] * 5)
    plain = _mean([*parts, bad], [1.0] * 5)
    # the plain mean is dragged far away; the robust one moves by at most the attacker's weight
    # over the honest weight times the radius (CenteredClip's fixed point), and keeps its direction
    assert torch.dist(plain, honest_mean) > 2 * truth.norm()
    radius = CLIP_MULTIPLE * torch.stack(parts).norm(dim=1).median()
    assert torch.dist(robust, honest_mean) < 1.05 * radius / 4
    assert torch.cosine_similarity(robust, truth, dim=0) > 0.85
    assert kept[-1] < 0.5 and min(kept[:-1]) > 0.5  # the attacker, and only it, is clipped


def test_claimed_weights_are_capped_at_twice_the_lower_median() -> None:
    w = capped_weights([100.0, 110.0, 10_000.0, 1e-3])
    assert w.tolist() == pytest.approx([100.0, 110.0, 220.0, 1e-3])
    # two members: nobody can tell who lies, so the lower claim sets the cap
    assert capped_weights([100.0, 10_000.0]).tolist() == pytest.approx([100.0, 200.0])


def test_a_huge_weight_claim_cannot_take_over_the_round() -> None:
    truth, parts = _honest(3, seed=2)
    liar = torch.zeros(D)  # a free rider: no work, 1000x the samples
    robust, _ = robust_mean([*parts, liar], [100.0, 100.0, 100.0, 100_000.0])
    assert torch.cosine_similarity(robust, truth, dim=0) > 0.9
    assert robust.norm() > 0.5 * truth.norm()


def test_weighted_median() -> None:
    x = torch.tensor([[1.0, 10.0], [2.0, 30.0], [3.0, 20.0]])
    assert weighted_median(x, torch.tensor([1.0, 1.0, 1.0])).tolist() == [2.0, 20.0]
    assert weighted_median(x, torch.tensor([1.0, 5.0, 1.0])).tolist() == [2.0, 30.0]
    assert weighted_median(x, torch.tensor([1e-3, 1.0, 1.0])).tolist() == [2.0, 20.0]
    assert weighted_median(x[:2], torch.tensor([1.0, 1.0])).tolist() == [1.5, 20.0]


def test_parts_that_cannot_be_aggregated() -> None:
    shape = torch.Size([3])
    assert part_problem(torch.ones(3), shape, 1.0) == ""
    assert "NaN" in part_problem(torch.tensor([1.0, float("nan"), 0.0]), shape, 1.0)
    assert "NaN" in part_problem(torch.tensor([1.0, float("inf"), 0.0]), shape, 1.0)
    assert "shape" in part_problem(torch.ones(4), shape, 1.0)
    assert "weight" in part_problem(torch.ones(3), shape, -1.0)
    assert "weight" in part_problem(torch.ones(3), shape, float("nan"))


def _reduce(parts_by_sender: list[list[torch.Tensor]], weights: list[float],
            keep_whole: tuple[int, ...] = ()) -> tuple[list[torch.Tensor], Any]:
    shapes = [p.shape for p in parts_by_sender[0]]

    async def run() -> tuple[list[torch.Tensor], RobustPartReducer]:
        reducer = RobustPartReducer(shapes, len(parts_by_sender), keep_whole=keep_whole)

        async def send(i: int) -> list[torch.Tensor]:
            out = []
            for k, part in enumerate(parts_by_sender[i]):
                out.append(await reducer.accumulate_part(i, k, part, weight=weights[i]))
            return out

        results = await asyncio.gather(*(send(i) for i in range(len(parts_by_sender))))
        return results[0], reducer

    return asyncio.run(run())


def test_each_sender_carried_its_capped_weight_and_one_that_carried_nothing_is_not_checked() -> None:
    """The verdict's weight is the samples a sender's parts carried into the average (the weight it
    sent): the ledger grants no more than its rounds carried, so one that sends weight 0 (as a peer
    tagging along after loading a state does) has nothing to check."""
    from types import SimpleNamespace

    from essaim.swarm.aggregation import RobustAllReduceRunner

    a = [torch.full((8,), 1.0), torch.full((8,), 2.0)]
    b = [torch.full((8,), 3.0), torch.full((8,), 3.0)]
    greedy = [torch.full((8,), 2.0), torch.full((8,), 2.0)]
    along = [torch.zeros(8), torch.zeros(8)]
    _, reducer = _reduce([a, b, greedy, along], [4.0, 6.0, 600.0, 0.0], keep_whole=(0, 3))
    carried = [reducer.verdicts[i].as_dict()["weight"] for i in range(4)]
    assert carried == [4.0, 6.0, 600.0, 0.0], carried
    assert [len(reducer.whole[i]) for i in (0, 3)] == [2, 2]
    runner = SimpleNamespace(tensor_part_reducer=reducer, sender_peer_ids=["a", "b", "greedy", "along"])
    kept = RobustAllReduceRunner.whole_updates(runner)  # type: ignore[arg-type]
    assert set(kept) == {"a"} and kept["a"].tolist() == [1.0] * 8 + [2.0] * 8


def test_the_reducer_refuses_a_nan_sender_for_the_rest_of_the_round() -> None:
    a = [torch.full((8,), 1.0), torch.full((8,), 1.0)]
    b = [torch.full((8,), 3.0), torch.full((8,), 3.0)]
    bad = [torch.full((8,), 2.0), torch.full((8,), float("nan"))]
    averaged, reducer = _reduce([a, b, bad], [1.0, 1.0, 1.0])
    assert torch.isfinite(averaged[1]).all() and averaged[1].tolist() == pytest.approx([2.0] * 8)
    assert reducer.verdicts[2].refused and not reducer.verdicts[0].refused
    assert set(suspects({str(i): v for i, v in reducer.verdicts.items()})) == {"2"}


def test_the_reducer_refuses_a_part_of_the_wrong_shape() -> None:
    a = [torch.full((8,), 1.0)]
    b = [torch.full((8,), 3.0)]
    bad = [torch.full((5,), 100.0)]
    averaged, reducer = _reduce([a, b, bad], [1.0, 1.0, 1.0])
    assert averaged[0].tolist() == pytest.approx([2.0] * 8)
    assert "shape" in reducer.verdicts[2].refused


def test_gathered_data_carries_the_verdicts() -> None:
    import pickle

    g = pickle.loads(pickle.dumps(Gathered({"peer": b"x"}, verdicts={"peer": {"refused": "", "kept": 0.002}})))
    assert dict(g) == {"peer": b"x"} and suspects(g.verdicts) == {"peer": "clipped to 0.2% of its pull"}


def test_a_far_update_is_named_when_it_pulls_against_the_group_or_is_gross() -> None:
    _, parts = _honest(3, seed=4)
    # honest but far: twelve times the others' norm, along their direction (a newcomer's fresh Adam
    # state, or most of an epoch's samples); negated x10; x1000
    # (against the group: named in its second round running)
    for bad, named in ((parts[0] * 12, False), (-parts[0] * 10, True), (parts[0] * 1000, True)):
        against: set[str] = set()
        for round_ in range(2):
            _, reducer = _reduce([[p] for p in (*parts, bad)], [100.0] * 4)
            verdicts = {str(i): v for i, v in reducer.verdicts.items()}
            mark_repeats(verdicts, against)
            assert reducer.verdicts[3].kept < SUSPECT_KEPT, reducer.verdicts[3]
            gross = reducer.verdicts[3].kept < NAMED_AT_ONCE_KEPT
            assert set(suspects(verdicts)) == ({"3"} if named and (gross or round_) else set()), verdicts
    # the sign attack is named by its direction, the scale attack by its distance
    _, reducer = _reduce([[p] for p in (*parts, -parts[0] * 10)], [100.0] * 4)
    assert reducer.verdicts[3].cosine < -0.9 and reducer.verdicts[3].kept > NAMED_AT_ONCE_KEPT
    assert far_against(reducer.verdicts[3]) and not suspects({"m": reducer.verdicts[3]})
    reducer.verdicts[3].again = True
    assert "against the group" in suspects({"m": reducer.verdicts[3].as_dict()})["m"]
    assert all(reducer.verdicts[i].cosine == 1.0 for i in range(3))  # honest members were not far


def test_far_and_against_once_between_rounds_along_the_group_is_not_named() -> None:
    """An honest newcomer was far and against the group once, between rounds along it: bounded by
    the clipping, never named; a round along the group wipes out the round against it, and a
    round it was refused or in a pair leaves the memory as it was."""
    _, parts = _honest(3, seed=6)
    along, flipped = parts[0] * 1.5, -parts[0] * 10
    against: set[str] = set()
    for bad, named in ((flipped, False), (along, False), (flipped, False), (flipped, True)):
        _, reducer = _reduce([[p] for p in (*parts, bad)], [100.0] * 4)
        verdicts = {str(i): v for i, v in reducer.verdicts.items()}
        mark_repeats(verdicts, against)
        assert set(suspects(verdicts)) == ({"3"} if named else set()), verdicts
        assert reducer.verdicts[3].again == named and not any(reducer.verdicts[i].again for i in range(3))
    # clipped in a pair (which of two is far is not known), or refused: the memory stays as it was
    against.add("4")
    mark_repeats({"3": Verdict(kept=0.1, in_pair=True, cosine=-1.0), "4": Verdict(refused="NaN")}, against)
    assert against == {"3", "4"}


def test_two_members_have_no_majority_direction() -> None:
    _, parts = _honest(1, seed=5)
    flipped = -parts[0] * 10
    assert cosines_with_median([parts[0], flipped], [100.0, 100.0], [1]) == {}
    # the averaging peer's token weight is no claim: it does not make a third
    zero = torch.zeros(D)
    assert cosines_with_median([parts[0], flipped, zero], [100.0, 100.0, 1e-3], [1]) == {}
    _, reducer = _reduce([[parts[0]], [flipped]], [100.0, 100.0])
    assert suspects({str(i): v for i, v in reducer.verdicts.items()}) == {}


def test_a_lone_member_is_held_to_the_norms_of_recent_rounds() -> None:
    history, key = NormHistory(), (0, D)
    _, parts = _honest(3, seed=3)
    assert history.bound(key) is None  # no round yet: no reference
    history.add(key, group_norm(parts, [1.0, 1.0, 1.0]))
    typical = float(torch.stack(parts).norm(dim=1).median())
    out, kept = robust_mean([parts[0] * 1000], [1.0], max_norm=history.bound(key))
    assert float(out.norm()) == pytest.approx(HISTORY_MULTIPLE * typical, rel=1e-3) and kept[0] < 0.01
    # an honest lone member is left as it is, and a lone member's round is nobody's reference
    out, kept = robust_mean([parts[1]], [1.0], max_norm=history.bound(key))
    assert torch.equal(out, parts[1]) and kept == [1.0]
    assert group_norm([parts[0] * 1000], [1.0]) is None
    assert group_norm([parts[0] * 1000, torch.zeros(D)], [1.0, 1e-3]) is None  # the averaging peer is no claim


def test_the_reducer_remembers_the_norms_of_its_slices_across_rounds() -> None:
    history = NormHistory()
    shapes = [torch.Size([8])]

    async def round_(parts: list[torch.Tensor]) -> torch.Tensor:
        reducer = RobustPartReducer(shapes, len(parts), history=history, part_keys=[(0, 8)])
        out = await asyncio.gather(*(reducer.accumulate_part(i, 0, p, weight=1.0) for i, p in enumerate(parts)))
        return out[0]

    asyncio.run(round_([torch.full((8,), 1.0), torch.full((8,), 1.2)]))
    alone = asyncio.run(round_([torch.full((8,), 1000.0)]))
    assert float(alone.norm()) == pytest.approx(HISTORY_MULTIPLE * float(torch.full((8,), 1.1).norm()), rel=1e-3)


def test_a_group_of_three_is_its_own_reference_and_a_still_slice_bounds_nothing() -> None:
    history = NormHistory()
    shapes = [torch.Size([8])]

    async def round_(parts: list[torch.Tensor]) -> tuple[torch.Tensor, RobustPartReducer]:
        reducer = RobustPartReducer(shapes, len(parts), history=history, part_keys=[(0, 8)])
        out = await asyncio.gather(*(reducer.accumulate_part(i, 0, p, weight=100.0) for i, p in enumerate(parts)))
        return out[0], reducer

    asyncio.run(round_([torch.zeros(8), torch.zeros(8)]))  # a LoRA slice before it moves: norm 0
    assert history.bound((0, 8)) is None
    asyncio.run(round_([torch.full((8,), 1e-3), torch.full((8,), 1.1e-3), torch.full((8,), 1.2e-3)]))
    # the updates grow 100x in a round (a learning-rate warm-up): a group of three is its own reference
    out, reducer = asyncio.run(round_([torch.full((8,), 0.1), torch.full((8,), 0.12), torch.full((8,), 0.11)]))
    assert out.tolist() == pytest.approx([0.11] * 8) and all(v.kept == 1.0 for v in reducer.verdicts.values())
    # a pair's median is the midpoint of its norms, which one far update would set: the recent
    # rounds bound it; who of the two is far is not known, so nobody is named
    out, reducer = asyncio.run(round_([torch.full((8,), 0.11), torch.full((8,), 110.0)]))
    assert float(out.norm()) < 2 * CLIP_MULTIPLE * HISTORY_MULTIPLE * float(torch.full((8,), 0.11).norm())
    assert suspects({str(i): v for i, v in reducer.verdicts.items()}) == {} and reducer.verdicts[1].in_pair


def test_a_zero_update_claiming_twice_the_samples_does_not_clip_its_partner() -> None:
    _, parts = _honest(1, seed=6)
    _, reducer = _reduce([[parts[0]], [torch.zeros(D)]], [100.0, 10_000.0])
    assert reducer.verdicts[0].kept == 1.0 and suspects({str(i): v for i, v in reducer.verdicts.items()}) == {}
    # nor in a group: the scale is the members' median norm, each counted once
    _, more = _honest(3, seed=7)
    _, reducer = _reduce([[p] for p in more] + [[torch.zeros(D)], [torch.zeros(D)]], [100.0] * 3 + [10_000.0] * 2)
    assert all(reducer.verdicts[i].kept > SUSPECT_KEPT for i in range(3)), reducer.verdicts


def test_a_sender_named_in_an_earlier_round_is_shut_out() -> None:
    async def run() -> tuple[torch.Tensor, RobustPartReducer]:
        reducer = RobustPartReducer([torch.Size([4])], 3, excluded={2: "excluded for the rest of the job after x"})
        parts = [torch.full((4,), 1.0), torch.full((4,), 3.0), torch.full((4,), 2.5)]
        out = await asyncio.gather(*(reducer.accumulate_part(i, 0, p, weight=1.0) for i, p in enumerate(parts)))
        return out[0], reducer

    averaged, reducer = asyncio.run(run())
    assert averaged.tolist() == pytest.approx([2.0] * 4)  # the third sender's part is not in it
    assert suspects({"2": reducer.verdicts[2]})["2"].startswith("refused: excluded")
