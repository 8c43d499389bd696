"""The coordinator's HTTP side: health, Prometheus metrics and a JSON status API.

    app = create_app(service, settings, metrics=metrics)   # the dashboard adds its routes to it

Routes: ``GET /healthz`` (200 while the process serves), ``GET /metrics`` (Prometheus text:
essaim_volunteers{status}, essaim_jobs{status}, essaim_job_samples_per_second{job},
essaim_heartbeat_latency_seconds, essaim_store_errors_total), ``GET /api/v1/status`` (JSON; only
with settings.public_pages), and the web dashboard's routes (essaim.coordinator.dashboard, added
here by ``register_dashboard``). :class:`Metrics` is the in-process registry the gRPC servicer feeds.
The server runs this app under uvicorn on the same event loop as gRPC.
"""

from __future__ import annotations

import bisect
import logging
import threading
from typing import Any

from essaim.protocol.version import __version__
from fastapi import FastAPI, HTTPException
from fastapi.responses import PlainTextResponse

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Histogram:
    """A Prometheus-style cumulative histogram (thread-safe)."""

    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.buckets = buckets
        self._counts = [0] * (len(buckets) + 1)
        self.sum = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.buckets, value)] += 1
            self.sum += value
            self.count += 1

    def render(self, name: str, help_text: str) -> list[str]:
        lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        running = 0
        with self._lock:
            for bound, n in zip(self.buckets, self._counts, strict=False):
                running += n
                lines.append(f'{name}_bucket{{le="{bound:g}"}} {running}')
            lines.append(f'{name}_bucket{{le="+Inf"}} {self.count}')
            lines.append(f"{name}_sum {self.sum:.6f}")
            lines.append(f"{name}_count {self.count}")
        return lines


class Metrics:
    """What the servicer and background tasks count; /metrics renders it."""

    def __init__(self) -> None:
        self.heartbeat_latency = Histogram()
        self.store_errors = 0
        self.rpc_errors: dict[tuple[str, str], int] = {}
        self._lock = threading.Lock()

    def store_error(self, _exc: BaseException | None = None) -> None:
        with self._lock:
            self.store_errors += 1

    def rpc_error(self, method: str, code: str) -> None:
        with self._lock:
            self.rpc_errors[(method, code)] = self.rpc_errors.get((method, code), 0) + 1


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render_metrics(status: dict[str, Any], metrics: Metrics) -> str:
    lines = ["# HELP essaim_volunteers Volunteers by status.", "# TYPE essaim_volunteers gauge"]
    lines += [f'essaim_volunteers{{status="{s}"}} {n}' for s, n in status["volunteers"].items()]
    lines += ["# HELP essaim_jobs Jobs by status.", "# TYPE essaim_jobs gauge"]
    lines += [f'essaim_jobs{{status="{s}"}} {n}' for s, n in status["jobs"].items()]
    lines += [
        "# HELP essaim_job_samples_per_second Training throughput of each running job.",
        "# TYPE essaim_job_samples_per_second gauge",
    ]
    lines += [
        f'essaim_job_samples_per_second{{job="{_label(j["id"])}"}} {j["samples_per_second"]}'
        for j in status["running_jobs"]
    ]
    lines += metrics.heartbeat_latency.render(
        "essaim_heartbeat_latency_seconds", "Time the coordinator spends answering a heartbeat."
    )
    lines += [
        "# HELP essaim_store_errors_total Store operations that failed.",
        "# TYPE essaim_store_errors_total counter",
        f"essaim_store_errors_total {metrics.store_errors}",
        "# HELP essaim_heartbeats_pending Heartbeats buffered, not yet written to the store.",
        "# TYPE essaim_heartbeats_pending gauge",
        f"essaim_heartbeats_pending {status['pending_heartbeats']}",
        "# HELP essaim_heartbeat_interval_seconds The heartbeat interval volunteers are told now.",
        "# TYPE essaim_heartbeat_interval_seconds gauge",
        f"essaim_heartbeat_interval_seconds {status['heartbeat_interval_s']}",
        "# HELP essaim_load The coordinator's load as a ratio to its target (CPU share or event-loop lag).",
        "# TYPE essaim_load gauge",
        f"essaim_load {status['load']:.3f}",
        "# HELP essaim_rpc_errors_total Failed gRPC calls by method and status code.",
        "# TYPE essaim_rpc_errors_total counter",
    ]
    lines += [
        f'essaim_rpc_errors_total{{method="{m}",code="{c}"}} {n}'
        for (m, c), n in sorted(metrics.rpc_errors.items())
    ]
    return "\n".join(lines) + "\n"


def create_app(service: Any, settings: Any, *, metrics: Metrics | None = None) -> FastAPI:
    """The coordinator's FastAPI app; ``app.state`` holds service, settings and metrics."""
    app = FastAPI(title="essaim coordinator", version=__version__, docs_url=None, redoc_url=None)
    app.state.service = service
    app.state.settings = settings
    app.state.metrics = metrics = metrics or Metrics()

    @app.get("/healthz", summary="Is the coordinator up (its version)")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics of the coordinator and its jobs")
    def prometheus() -> PlainTextResponse:
        try:
            status = service.status()
        except Exception:
            metrics.store_error()
            raise
        return PlainTextResponse(render_metrics(status, metrics), media_type="text/plain; version=0.0.4")

    @app.get("/api/v1/status", summary="Counts of volunteers and jobs (404 while the pages are private)")
    def api_status() -> dict[str, Any]:
        if not settings.public_pages:
            raise HTTPException(status_code=404, detail="public pages are turned off on this coordinator")
        return service.status()

    _add_dashboard(app, service, settings)
    return app


def _add_dashboard(app: FastAPI, service: Any, settings: Any) -> None:
    """Mount the web dashboard (essaim.coordinator.dashboard) when it is installed."""
    try:
        from essaim.coordinator.dashboard import register_dashboard
    except ImportError as exc:
        logger.warning("serving without the dashboard (%s)", exc)
        return
    register_dashboard(app, service=service, settings=settings)
