"""A surge of volunteers against one coordinator: with the heartbeat pacer, and with the interval fixed.

Volunteers here behave as the app's do (``essaim.client.link``): each heartbeats, then waits the
interval the reply hands out (up to 15% early, at random), and backs off with full jitter after an
error. ``--volunteers`` of them heartbeat for ``--steady`` seconds (under the coordinator's
capacity), then ``--surge`` times as many (past it) for ``--surge-seconds``. Each run is made
twice, side by side: the coordinator's pacer free to lengthen the interval up to
``--longest`` seconds, and held at ``--interval`` (``--heartbeat-interval-max`` equal to it).

It reports per phase: the load offered at the base interval, the heartbeats answered per second,
p50/p99/max latency as the volunteers saw it, errors (timeouts: a call waits 10 s at most), the
interval handed out at the phase's end, the coordinator's CPU per heartbeat and its heartbeats per
CPU-second, and how many volunteers the coordinator counts online against how many are running
(heartbeat-derived state must stay right with longer intervals).

Writes ``bench/results/heartbeat_surge.json`` and ``.md``.

    .venv/bin/python bench/heartbeat_surge.py                        # SQLite, 2,000 -> 6,000 volunteers
    .venv/bin/python bench/heartbeat_surge.py --backend postgresql --volunteers 2000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing as mp
import os
import platform
import random
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from coordinator_load import (  # a sibling script, not a package
    PG_DEFAULT,
    RESULTS,
    _cpu_seconds,
    fresh_postgres,
    make_tokens,
    prepare_store,
    start_coordinator,
)

CALL_TIMEOUT_S = 10.0
BACKOFF_CAP_S = 60.0


async def _volunteers(address: str, creds: list[tuple[str, str]], start_at: float, end_at: float,
                      base_interval: float) -> list[tuple[float, float, int, int]]:
    """Run ``creds`` as app volunteers from ``start_at`` (each at a random point of its first
    interval) to ``end_at``; returns (wall time the call ended, latency s, interval handed out or 0,
    1 if it failed) per call."""
    import grpc
    from essaim.protocol import serde
    from essaim.protocol.auth_metadata import bearer_metadata
    from essaim.protocol.types import HeartbeatReport
    from essaim.protocol.v1 import coordinator_pb2 as pb

    channels = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
                for _ in range(4)]
    calls = [c.unary_unary("/essaim.v1.Coordinator/Heartbeat", request_serializer=None,
                           response_deserializer=pb.HeartbeatResponse.FromString) for c in channels]
    out: list[tuple[float, float, int, int]] = []

    async def volunteer(k: int, vid: str, token: str) -> None:
        request = serde.heartbeat_report_to_proto(HeartbeatReport(volunteer_id=vid, state="training")).SerializeToString()
        metadata = tuple(bearer_metadata(token))
        call = calls[k % len(calls)]
        await asyncio.sleep(max(0.0, start_at - time.time()) + random.uniform(0, base_interval))
        failures = 0
        while time.time() < end_at:
            t0 = time.perf_counter()
            try:
                reply = await call(request, timeout=CALL_TIMEOUT_S, metadata=metadata)
            except Exception:
                out.append((time.time(), time.perf_counter() - t0, 0, 1))
                failures += 1
                await asyncio.sleep(random.uniform(0, min(BACKOFF_CAP_S, 2.0 ** failures)))
                continue
            failures = 0
            interval = int(reply.heartbeat_interval_seconds) or int(base_interval)
            out.append((time.time(), time.perf_counter() - t0, interval, 0))
            await asyncio.sleep(interval * random.uniform(0.85, 1.0))

    await asyncio.gather(*(volunteer(k, vid, token) for k, (vid, token) in enumerate(creds)))
    for c in channels:
        await c.close()
    return out


def _client(address: str, creds: list[tuple[str, str]], start_at: float, end_at: float, base: float,
            queue: Any) -> None:
    # the calls' records pile up by the hundred thousand: a full garbage collection over them
    # would pause every volunteer of this process, and count as the coordinator's latency
    gc.disable()
    queue.put(asyncio.run(_volunteers(address, creds, start_at, end_at, base)))


def _metrics(http: str) -> dict[str, float]:
    with urllib.request.urlopen(f"http://{http}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    values = {}
    for line in text.splitlines():
        if line.startswith(("essaim_heartbeat_interval_seconds ", "essaim_load ", 'essaim_volunteers{status="online"}')):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def _q(values: list[float], p: float) -> float:
    return values[min(len(values) - 1, int(p * len(values)))] * 1000 if values else float("nan")


def run(url: str, tmp: Path, creds: list[tuple[str, str]], args: argparse.Namespace, paced: bool) -> dict[str, Any]:
    longest = args.longest if paced else args.interval
    proc, address, http = start_coordinator(tmp, url, [
        "--heartbeat-interval", f"{args.interval:g}", "--heartbeat-interval-max", f"{longest:g}",
        "--heartbeat-timeout", f"{3 * args.interval:g}"])
    coord = psutil.Process(proc.pid)
    steady = creds[: args.volunteers]
    surge = creds[args.volunteers: args.volunteers * args.surge]
    t0 = time.time() + 8.0  # the client processes import grpc and the protocol first
    phases = [("steady", t0, t0 + args.steady, len(steady)),
              ("surge", t0 + args.steady, t0 + args.steady + args.surge_seconds, len(steady) + len(surge))]
    end = phases[-1][2]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    workers = []
    for group, start_at in ((steady, t0), (surge, phases[1][1])):
        for i in range(args.procs):
            workers.append(ctx.Process(target=_client, args=(address, group[i:: args.procs], start_at, end,
                                                              args.interval, queue)))
    for w in workers:
        w.start()
    readings: dict[str, dict[str, Any]] = {}
    try:
        for name, start_at, end_at, _ in phases:
            time.sleep(max(0.0, start_at - time.time()))
            cpu0 = _cpu_seconds(coord)
            time.sleep(max(0.0, end_at - time.time() - 1.0))
            readings[name] = {"cpu_s": _cpu_seconds(coord) - cpu0, "metrics": _metrics(http)}
        calls = [c for _ in workers for c in queue.get(timeout=CALL_TIMEOUT_S + 120)]
        for w in workers:
            w.join(30)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except Exception:
            proc.kill()
    rows = []
    for name, start_at, end_at, running in phases:
        # the phase's second half: the surge's first seconds are the volunteers' first heartbeats
        # (each at a random point of its first interval) and the pacer's first step
        settled = start_at + (end_at - start_at) / 2
        mine = [c for c in calls if settled <= c[0] < end_at - 1.0]
        ok = sorted(c[1] for c in mine if not c[3])
        span = end_at - 1.0 - settled
        answered = len(ok) / span
        cpu = readings[name]["cpu_s"] / (end_at - 1.0 - start_at)
        metrics = readings[name]["metrics"]
        rows.append({
            "pacer": "on" if paced else "off (interval held)",
            "phase": name, "volunteers": running, "offered_at_base_per_s": running / args.interval,
            "answered_per_s": answered, "p50_ms": _q(ok, 0.5), "p99_ms": _q(ok, 0.99),
            "max_ms": ok[-1] * 1000 if ok else float("nan"), "errors": sum(c[3] for c in mine),
            "interval_s": metrics.get("essaim_heartbeat_interval_seconds"), "load": metrics.get("essaim_load"),
            "online_counted": metrics.get('essaim_volunteers{status="online"}'),
            "coordinator_cpu_percent": 100 * cpu,
            "cpu_us_per_heartbeat": 1e6 * cpu / answered if answered else float("nan"),
            "heartbeats_per_cpu_s": answered / cpu if cpu else float("nan"),
        })
    return {"rows": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--pg-url", default=os.environ.get("ESSAIM_TEST_POSTGRES_URL", PG_DEFAULT))
    parser.add_argument("--volunteers", type=int, default=2000, help="volunteers heartbeating before the surge")
    parser.add_argument("--surge", type=int, default=3, help="times as many volunteers in the surge")
    parser.add_argument("--interval", type=float, default=2.0, help="the coordinator's base interval (s)")
    parser.add_argument("--longest", type=float, default=30.0, help="the longest interval the pacer may hand out")
    parser.add_argument("--steady", type=float, default=40.0, help="seconds before the surge")
    parser.add_argument("--surge-seconds", type=float, default=60.0, help="seconds of surge")
    parser.add_argument("--procs", type=int, default=2, help="client processes per phase")
    args = parser.parse_args(argv)

    total = args.volunteers * args.surge
    results: list[dict[str, Any]] = []
    for paced in (True, False):
        with tempfile.TemporaryDirectory(prefix="essaim-surge-") as tmp:
            if args.backend == "postgresql":
                url = fresh_postgres(args.pg_url)
                if url is None:
                    print("no PostgreSQL answered", file=sys.stderr)
                    return 2
            else:
                url = f"sqlite:///{Path(tmp) / 'coordinator.db'}"
            prepare_store(url, total)
            creds = make_tokens(url, total)
            print(f"pacer {'on' if paced else 'off'}: {args.volunteers:,} volunteers, then {total:,}", flush=True)
            results.extend(run(url, Path(tmp), creds, args, paced)["rows"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"machine": f"{platform.machine()}, {psutil.cpu_count()} cores", "backend": args.backend,
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "load_average_end": os.getloadavg()[0]}
    (RESULTS / "heartbeat_surge.json").write_text(json.dumps({"meta": meta, "rows": results}, indent=2))
    lines = ["# Heartbeat surge", "",
             f"{meta['machine']}; {args.backend}; base interval {args.interval:g} s, longest {args.longest:g} s; "
             f"`{meta['command']}` (each phase measured over its second half; the load generator shares the cores)", "",
             "| pacer | phase | volunteers | offered at the base interval /s | answered /s | p50 ms | p99 ms | max ms | "
             "errors | interval at the end s | load | online counted | coordinator CPU % | CPU µs/heartbeat | "
             "heartbeats per CPU-s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(
            f"| {r['pacer']} | {r['phase']} | {r['volunteers']:,} | {r['offered_at_base_per_s']:,.0f} | "
            f"{r['answered_per_s']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['max_ms']:.0f} | {r['errors']} | "
            f"{r['interval_s']:g} | {r['load']:.2f} | {r['online_counted']:,.0f} | {r['coordinator_cpu_percent']:.0f} | "
            f"{r['cpu_us_per_heartbeat']:.0f} | {r['heartbeats_per_cpu_s']:,.0f} |")
    (RESULTS / "heartbeat_surge.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
