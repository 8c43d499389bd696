"""The coordinator's web dashboard: pages for admins, researchers, volunteers and the public,
and the JSON API behind them.

    app = create_app(service, settings)                       # essaim.coordinator.http
    register_dashboard(app, service=service, settings=settings)

adds to the coordinator's FastAPI app:

- pages (:mod:`.pages`, :mod:`.admin_pages`): swarm, jobs, one job and its transparency page,
  contributions and teams, volunteers, the ledger, admin sign-in and admin forms;
- the JSON API under ``/api/v1`` (:mod:`.api`, :mod:`.downloads`), described in ``/openapi.json``
  with its security schemes and shown at ``/docs`` (:mod:`.apidocs`);
- ``/static/`` with every stylesheet, script and icon the pages use (nothing from elsewhere);
- a Content-Security-Policy allowing only this origin, on every response (:mod:`.access`);
- the swarm sampler behind the "volunteers online" chart: a daemon thread started here and
  stopped (its series saved) when the app's lifespan ends or the process exits.

``settings.public_pages`` off: pages and reads need an admin sign-in or a bearer token.
"""

from __future__ import annotations

import atexit
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from essaim.coordinator.dashboard.access import Access, SecurityHeaders
from essaim.coordinator.dashboard.actions import AdminActions
from essaim.coordinator.dashboard.admin_pages import build_admin_pages_router
from essaim.coordinator.dashboard.api import build_api_router
from essaim.coordinator.dashboard.apidocs import build_docs_router
from essaim.coordinator.dashboard.apidocs import install as install_openapi
from essaim.coordinator.dashboard.downloads import build_downloads_router
from essaim.coordinator.dashboard.pages import PageContext, build_pages_router
from essaim.coordinator.dashboard.queries import DashboardQueries
from essaim.coordinator.dashboard.rendering import Renderer
from essaim.coordinator.dashboard.sampler import SwarmSampler
from essaim.coordinator.dashboard.sessions import SessionStore
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

__all__ = ["Dashboard", "register_dashboard"]

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).with_name("static")
STATIC_PREFIX = "/static"


class Dashboard:
    """The parts of one registered dashboard (kept on ``app.state.dashboard`` for tests and tools)."""

    def __init__(self, *, service: Any, settings: Any) -> None:
        from essaim.coordinator.swarm_keys import SWARM_KEY, load_or_create_swarm_key

        signer = load_or_create_swarm_key(Path(settings.data_dir) / SWARM_KEY)
        self.queries = DashboardQueries(service.store, Path(settings.artifacts_dir), signer=signer,
                                        jobs_dir=Path(settings.data_dir) / "jobs", explain=service.explain_queued)
        self.sessions = SessionStore()
        self.access = Access(service=service, settings=settings, sessions=self.sessions)
        self.actions = AdminActions(service)
        self.sampler = SwarmSampler(service.store)
        self.renderer = Renderer(public_pages=bool(settings.public_pages))
        self._atexit_registered = False

    def start(self) -> None:
        """Start the swarm sampler (idempotent)."""
        self.sampler.start()
        if not self._atexit_registered:
            atexit.register(self._stop_quietly)
            self._atexit_registered = True

    def stop(self) -> None:
        """Stop the swarm sampler and save its series."""
        self.sampler.stop()

    def _stop_quietly(self) -> None:
        try:
            self.sampler.stop(timeout=2.0)
        except Exception as exc:  # at interpreter exit the store may be gone already
            log.debug("could not stop the swarm sampler cleanly: %s", exc)


def register_dashboard(app: FastAPI, *, service: Any, settings: Any) -> Dashboard:
    """Add the dashboard's pages, JSON API, static files and security headers to ``app``.

    Call it once, before the app starts serving. The swarm sampler starts now; it stops with the
    app's lifespan (when uvicorn runs one), at process exit, or with ``Dashboard.stop()``.
    """
    dashboard = Dashboard(service=service, settings=settings)
    pages = PageContext(access=dashboard.access, renderer=dashboard.renderer, queries=dashboard.queries)
    app.include_router(
        build_api_router(
            queries=dashboard.queries, access=dashboard.access, actions=dashboard.actions, sampler=dashboard.sampler
        )
    )
    app.include_router(build_downloads_router(queries=dashboard.queries, access=dashboard.access))
    app.include_router(build_pages_router(pages, sampler=dashboard.sampler))
    app.include_router(build_admin_pages_router(pages, actions=dashboard.actions))
    app.include_router(build_docs_router(app, dashboard.renderer, dashboard.access))
    install_openapi(app, public_reads=bool(settings.public_pages))
    app.mount(STATIC_PREFIX, StaticFiles(directory=STATIC_DIR), name="dashboard-static")
    app.add_middleware(SecurityHeaders, static_prefix=STATIC_PREFIX + "/")
    _stop_with_lifespan(app, dashboard)
    dashboard.start()
    app.state.dashboard = dashboard
    log.debug("dashboard registered (public pages %s)", "on" if settings.public_pages else "off")
    return dashboard


def _stop_with_lifespan(app: FastAPI, dashboard: Dashboard) -> None:
    """(Re)start the sampler when the app's lifespan starts, and stop it when it ends."""
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: Any) -> AsyncIterator[Any]:
        dashboard.start()
        try:
            async with inner(app_) as state:
                yield state
        finally:
            dashboard.stop()

    app.router.lifespan_context = lifespan
