"""Runs a coordinator: the gRPC API and the HTTP app on one event loop, plus background tasks.

    serve(settings)                     # blocks until SIGTERM / SIGINT, then stops gracefully

Start-up order: open (and migrate) the store, load bans and live jobs, create the first admin
token if there is none (printed once, written 0600 to ``data_dir/admin-token``), listen on both
ports, then print exactly one line::

    essaim coordinator ready grpc=HOST:PORT http=HOST:PORT

Tests and scripts wait for that line (ports 0 are replaced by the ones picked). The gRPC address is
written as clients should dial it: ``https://HOST:PORT`` with TLS (``--tls-cert``/``--tls-key``),
``http://HOST:PORT`` for plain text on a public address (``--insecure``), bare on loopback; the
HTTP address is ``https://HOST:PORT`` with TLS. On SIGTERM or
SIGINT the servers stop taking calls, buffered heartbeats are flushed, and the store is closed.
A swarm gateway passed in may also have ``resume(jobs)`` (called once at start with the running
and paused jobs), ``check(jobs)`` (every few seconds) and ``close()`` (at shutdown).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import signal
import socket
import sys
import threading
from collections.abc import Callable

import grpc
import uvicorn
from essaim.coordinator.errors import ConfigError
from essaim.coordinator.heartbeats import run_offline_sweeper, run_pacer
from essaim.coordinator.http import Metrics, create_app
from essaim.coordinator.service import MAX_JOB_LIMIT, CoordinatorService, SwarmGateway
from essaim.coordinator.servicer import CoordinatorServicer, build_handler
from essaim.coordinator.settings import CoordinatorSettings
from essaim.coordinator.store import open_store
from essaim.protocol.tls import is_loopback
from essaim.protocol.types import JobStatus

logger = logging.getLogger(__name__)

JOB_REFRESH_SECONDS = 5.0
REVOCATION_POLL_SECONDS = 2.0  # a revoked token stops working within this (and one call's time)
GRACE_SECONDS = 3.0


def read_tls(settings: CoordinatorSettings) -> tuple[bytes, bytes] | None:
    """(certificate chain, private key) PEM when the coordinator serves TLS; ConfigError when half of
    it is given, a file cannot be read, or plain text would be served on a public address."""
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise ConfigError("give both --tls-cert and --tls-key (the certificate chain and its private key)")
    if settings.tls_cert is None or settings.tls_key is None:
        if not is_loopback(settings.host) and not settings.insecure:
            raise ConfigError(
                f"refusing to serve plain text on {settings.host}: bearer tokens would cross the network in clear. "
                "Give --tls-cert and --tls-key, or --insecure behind a TLS-terminating proxy on this host")
        return None
    try:
        cert, key = settings.tls_cert.read_bytes(), settings.tls_key.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS certificate or key: {exc}") from None
    if b"-----BEGIN" not in cert or b"PRIVATE KEY-----" not in key:
        raise ConfigError("--tls-cert must be a PEM certificate chain and --tls-key its PEM private key")
    return cert, key


class _Uvicorn(uvicorn.Server):
    """uvicorn without its own signal handling: the coordinator owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


def _http_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen for HTTP on {host}:{port}: {exc.strerror}; pick another --http-port"
        ) from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _refresh_jobs(service: CoordinatorService, stop: asyncio.Event) -> None:
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), JOB_REFRESH_SECONDS)
        try:
            await asyncio.to_thread(service.refresh_jobs)
            await _gateway_hook(service, "check")
        except Exception as exc:
            logger.warning("could not refresh the live jobs: %s", exc)


async def _watch_token_revocations(service: CoordinatorService, stop: asyncio.Event) -> None:
    """Drop the token cache when a token was revoked, by this process or another (``token revoke``)."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), REVOCATION_POLL_SECONDS)
        try:
            await asyncio.to_thread(service.auth.watch_revocations)
        except Exception as exc:
            logger.warning("could not check for revoked tokens: %s", exc)


async def _gateway_hook(service: CoordinatorService, name: str) -> None:
    """Call the gateway's optional ``resume(jobs)`` / ``check(jobs)`` with the jobs it runs."""
    hook = getattr(service.gateway, name, None)
    if hook is None:
        return
    jobs = await asyncio.to_thread(
        service.store.list_jobs, statuses=[JobStatus.RUNNING, JobStatus.PAUSED], limit=MAX_JOB_LIMIT
    )
    await asyncio.to_thread(hook, jobs)


async def serve_async(
    settings: CoordinatorSettings,
    *,
    gateway: SwarmGateway | None = None,
    stop: asyncio.Event | None = None,
    announce: Callable[[str], None] | None = None,
) -> None:
    """Run until ``stop`` is set (or a signal arrives when ``stop`` is None)."""
    announce = announce or (lambda line: print(line, flush=True))
    loop = asyncio.get_running_loop()
    loop.set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="coord")
    )
    stop = stop or asyncio.Event()
    if threading_is_main():
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

    tls = read_tls(settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = await asyncio.to_thread(open_store, settings.resolved_db_url())
    metrics = Metrics()
    service = CoordinatorService(store, settings, gateway=gateway)
    service.heartbeats.on_error = metrics.store_error
    tasks: list[asyncio.Task[None]] = []
    grpc_server: grpc.aio.Server | None = None
    http_server: _Uvicorn | None = None
    try:
        admin_token = await asyncio.to_thread(service.startup)
        await _gateway_hook(service, "resume")
        if admin_token:
            announce(f"first admin token (shown once; also in {settings.admin_token_path}): {admin_token}")

        grpc_server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.max_message_bytes),
                ("grpc.max_send_message_length", 64 * 1024 * 1024),
                ("grpc.so_reuseport", 0),
                # gRPC core cancels calls beyond 1,000 waiting for the handler by default: a burst of
                # heartbeats then fails with CANCELLED instead of waiting a few milliseconds
                ("grpc.server.max_pending_requests", settings.max_pending_rpcs),
                ("grpc.server.max_pending_requests_hard_limit", 2 * settings.max_pending_rpcs),
            ],
            maximum_concurrent_rpcs=None,
        )
        grpc_server.add_generic_rpc_handlers((build_handler(CoordinatorServicer(service, metrics=metrics)),))
        try:
            if tls is not None:
                credentials = grpc.ssl_server_credentials([(tls[1], tls[0])])
                grpc_port = grpc_server.add_secure_port(_fmt(settings.host, settings.grpc_port), credentials)
            else:
                grpc_port = grpc_server.add_insecure_port(_fmt(settings.host, settings.grpc_port))
        except RuntimeError as exc:
            raise ConfigError(
                f"cannot listen for gRPC on {settings.host}:{settings.grpc_port} ({exc}); pick another --grpc-port"
            ) from None
        await grpc_server.start()

        sock = _http_socket(settings.host, settings.http_port)
        http_port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(service, settings, metrics=metrics),
            log_level="warning",
            lifespan="on",
            access_log=False,
            ssl_certfile=str(settings.tls_cert) if tls is not None else None,
            ssl_keyfile=str(settings.tls_key) if tls is not None else None,
        )
        http_server = _Uvicorn(config)
        tasks.append(asyncio.create_task(http_server.serve(sockets=[sock])))
        while not http_server.started:
            if tasks[0].done():
                await tasks[0]
                raise ConfigError("the HTTP server stopped during start-up; see the log above")
            await asyncio.sleep(0.01)

        tasks.append(asyncio.create_task(service.heartbeats.run(stop)))
        tasks.append(
            asyncio.create_task(
                run_offline_sweeper(
                    store,
                    service.heartbeats,
                    stop,
                    timeout=service.offline_timeout,
                    on_error=metrics.store_error,
                )
            )
        )
        tasks.append(asyncio.create_task(run_pacer(service.pacer, stop)))
        tasks.append(asyncio.create_task(_refresh_jobs(service, stop)))
        tasks.append(asyncio.create_task(_watch_token_revocations(service, stop)))
        scheme = "https://" if tls is not None else ("" if is_loopback(settings.host) else "http://")
        announce(
            f"essaim coordinator ready grpc={scheme}{_fmt(settings.host, grpc_port)} "
            f"http={'https://' if tls is not None else ''}{_fmt(settings.host, http_port)}"
        )
        await stop.wait()
        logger.info("stopping")
    finally:
        stop.set()
        if grpc_server is not None:
            await grpc_server.stop(GRACE_SECONDS)
        if http_server is not None:
            http_server.should_exit = True
        for task in tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, GRACE_SECONDS + 2)
        await service.heartbeats.flush()
        close_gateway = getattr(gateway, "close", None)
        if close_gateway is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(close_gateway)
        await asyncio.to_thread(store.close)
        logger.info("stopped")


def threading_is_main() -> bool:
    return threading.current_thread() is threading.main_thread()


def serve(settings: CoordinatorSettings, *, gateway: SwarmGateway | None = None) -> None:
    """Run a coordinator in this process until SIGTERM / SIGINT."""
    try:
        asyncio.run(serve_async(settings, gateway=gateway))
    except KeyboardInterrupt:  # a second Ctrl-C during shutdown
        sys.exit(130)
