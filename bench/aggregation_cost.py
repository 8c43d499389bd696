"""What robust aggregation costs a reducer: :func:`essaim.swarm.aggregation.robust_mean` against the
plain weighted mean hivemind computes, per part of the averaged vector, for groups of n members.

A reducer handles each part (512 KB of float32 by default: 131,072 values) as the members' parts
come in; the time per part times the number of parts it reduces is what a round costs it in CPU
on top of the transfer. Honest members here: one direction plus noise of a third of its norm; the
cost does not depend on what they send.

    .venv/bin/python bench/aggregation_cost.py                  # n = 4, 16, 100; 1 thread
    .venv/bin/python bench/aggregation_cost.py --sizes 4,16,100,1000 --threads 2

Writes ``bench/results/aggregation_cost.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from essaim.swarm.aggregation import robust_mean

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"
PART_VALUES = 2**19 // 4  # hivemind's default part: 512 KB


def _plain_mean(parts: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    acc = torch.zeros_like(parts[0])
    for part, w in zip(parts, weights, strict=True):
        acc.add_(part, alpha=w)
    return acc.div_(sum(weights))


def _time(fn: object, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - start)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--sizes", default="4,16,100", help="group sizes")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    truth = torch.randn(PART_VALUES, generator=g)
    rows = []
    for n in [int(x) for x in args.sizes.split(",") if x]:
        parts = [truth + torch.randn(PART_VALUES, generator=g) / 3 for _ in range(n)]
        weights = [100.0 + i for i in range(n)]
        robust = _time(lambda parts=parts, weights=weights: robust_mean(parts, weights), args.repeat)
        mean = _time(lambda parts=parts, weights=weights: _plain_mean(parts, weights), args.repeat)
        row = {"members": n, "robust_ms_per_part": round(robust * 1e3, 2), "mean_ms_per_part": round(mean * 1e3, 3),
               "ratio": round(robust / mean, 1),
               # 1 MB of fp16 on the wire is 2**19 values: four parts
               "robust_s_per_wire_mb": round(robust * (2**20 / 2) / PART_VALUES, 4)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                         f"load average {os.getloadavg()[0]:.1f} at the end",
              "threads": args.threads, "part_values": PART_VALUES, "rows": rows,
              "command": "python bench/aggregation_cost.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    lines = [
        "# Robust aggregation: reducer CPU per part against the plain mean",
        "",
        f"{report['machine']}; {args.threads} torch thread(s); parts of {PART_VALUES:,} float32 values (512 KB).",
        "",
        "| members | robust, ms per part | plain mean, ms per part | ratio | robust, s per MB of fp16 update |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['members']} | {r['robust_ms_per_part']} | {r['mean_ms_per_part']} | {r['ratio']} | "
              f"{r['robust_s_per_wire_mb']} |" for r in rows]
    lines += ["", f"Command: `{report['command']}`", ""]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "aggregation_cost.json").write_text(json.dumps(report, indent=1))
    (RESULTS / "aggregation_cost.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
