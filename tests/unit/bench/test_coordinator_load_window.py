"""bench/coordinator_load.py counts only the heartbeats answered within its measured window."""

from __future__ import annotations

import asyncio
import math
import time
from types import ModuleType

import grpc
import pytest


@pytest.fixture
def load(bench) -> ModuleType:
    return bench("coordinator_load")


def test_only_replies_within_the_window_count(load):
    t_start, t_end = 100.0, 110.0
    completions = [
        (99.5, 0.010),  # warm-up: neither
        (100.0, 0.020),  # the window's first instant
        (105.0, 0.030),
        (109.999, 0.040),
        (110.0, 2.000),  # the window has closed: drained
        (113.0, 3.500),  # awaited after the window
    ]
    window, drained = load.split_window(completions, t_start, t_end)
    assert sorted(window) == [0.020, 0.030, 0.040]
    assert sorted(drained) == [2.000, 3.500]


def test_cpu_and_rate_are_those_of_the_window(load):
    """CPU read over a span a little longer than the window is scaled to the window's rate."""
    rates = load.window_rates(heartbeats=1_000, duration=10.0, cpu_s=5.0, cpu_span=10.5)
    assert rates["heartbeats_per_s"] == pytest.approx(100.0)
    assert rates["coordinator_cpu_percent"] == pytest.approx(100 * 5.0 / 10.5)
    assert rates["coordinator_cpu_us_per_heartbeat"] == pytest.approx(1e6 * (5.0 / 10.5) / 100.0)
    nothing = load.window_rates(heartbeats=0, duration=10.0, cpu_s=1.0, cpu_span=10.0)
    assert math.isnan(nothing["coordinator_cpu_us_per_heartbeat"])


def test_heartbeats_in_flight_at_the_end_are_drained_not_counted(load):
    """Open loop at 40/s against a server that answers every heartbeat after 0.4 s: about 16 are in
    flight when the window closes; the client awaits them, and they are kept out of the window's
    count, which cannot then exceed the rate the heartbeats were sent at."""

    async def scenario() -> tuple[dict, float, float]:
        async def heartbeat(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            await asyncio.sleep(0.4)
            return b""

        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            "essaim.v1.Coordinator", {"Heartbeat": grpc.unary_unary_rpc_method_handler(heartbeat)}
        )
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            t_start = time.time() + 1.0
            t_end = t_start + 1.0
            result = await load._client_main(
                f"127.0.0.1:{port}", None, [("v1", "token")], register=0, rate=40.0, clients=1,
                channels=1, t_start=t_start, t_end=t_end,
            )
        finally:
            await server.stop(None)
        return result, t_start, t_end

    result, t_start, t_end = asyncio.run(scenario())
    assert result["errors"] == 0
    assert all(done >= t_start for done, _ in result["completions"])  # warm-up replies are not kept
    window, drained = load.split_window(result["completions"], t_start, t_end)
    assert len(drained) >= 5, "the heartbeats in flight at the window's end were counted in it, or not awaited"
    assert len(window) <= 40 * (t_end - t_start) + 3
    assert all(latency >= 0.35 for latency in window + drained)
