"""Jinja2 rendering for the dashboard's pages, and the chart data they embed.

Autoescaping is always on: every value a page shows (a recipe's description, a volunteer's
pseudonym, a team, a ban reason) is escaped, and chart data is embedded as JSON in a
``<script type="application/json">`` block through ``tojson`` (which escapes ``<``, ``>``, ``&``
and quotes), read by ``static/charts.js``. No template writes an inline script, style or event
handler, so the Content-Security-Policy can forbid them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from essaim.coordinator.dashboard import formatting
from essaim.coordinator.dashboard.access import Viewer
from essaim.coordinator.dashboard.schemas import ProgressOut
from essaim.coordinator.dashboard.sessions import CSRF_FIELD
from essaim.protocol.types import FINAL_JOB_STATUSES
from essaim.protocol.version import __version__
from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

TEMPLATES_DIR = Path(__file__).with_name("templates")

NAV = (("swarm", "/", "Swarm"), ("jobs", "/jobs", "Jobs"), ("contributions", "/contributions", "Contributions"), ("ledger", "/ledger", "Ledger"))


def make_environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(formatting.FILTERS)
    env.globals.update(nav=NAV, version=__version__, csrf_field=CSRF_FIELD, query=lambda **kw: urlencode(kw),
                       ended=frozenset(s.value for s in FINAL_JOB_STATUSES))
    return env


class Renderer:
    def __init__(self, *, public_pages: bool) -> None:
        self.env = make_environment()
        self.public_pages = public_pages

    def page(
        self, request: Request, viewer: Viewer, template: str, *, status_code: int = 200, active: str = "", **context: Any
    ) -> HTMLResponse:
        flashes = viewer.session.pop_flashes() if viewer.session else []
        html = self.env.get_template(template).render(
            viewer=viewer,
            flashes=flashes,
            active=active,
            public_pages=self.public_pages,
            path=request.url.path + (f"?{request.url.query}" if request.url.query else ""),
            **context,
        )
        return HTMLResponse(html, status_code=status_code)


def time_chart(name: str, points: list[tuple[float, float]], *, y_label: str, empty: str = "No data yet") -> dict[str, Any]:
    """A one-series chart over time, in the shape charts.js reads."""
    return {"x": "time", "y_label": y_label, "empty": empty, "series": [{"name": name, "points": [[t, v] for t, v in points]}]}


def progress_charts(progress: ProgressOut) -> dict[str, dict[str, Any]]:
    """The job page's four curves: loss, eval metric, throughput and peers averaged in each round."""
    pts = progress.points
    waiting = "No progress reported yet"
    return {
        "loss": time_chart("loss", [(p.at, p.loss) for p in pts if p.loss], y_label="training loss", empty=waiting),
        "eval": time_chart(
            progress.eval_metric_name,
            [(p.at, p.eval_metric) for p in pts if p.eval_metric is not None],
            y_label=progress.eval_metric_name,
            empty="No evaluation yet (the checkpoint keeper evaluates after each checkpoint)",
        ),
        "throughput": time_chart(
            "samples per second", [(p.at, p.samples_per_second) for p in pts], y_label="samples/s", empty=waiting
        ),
        "peers": time_chart("peers averaged", [(p.at, p.live_peers) for p in pts], y_label="peers averaged", empty=waiting),
    }
