"""Joining a job's DHT: a hivemind DHT with the peer's stable identity, the swarm authorizer and the
validators of signed records, with hivemind's failures turned into DHTError.

    dht = start_dht(initial_peers=assignment.initial_peers, identity_path=identity,
                    authorizer=SwarmAuthorizer(key, token, coordinator_key, job_id),
                    record_validators=progress_validators(job_id, key))
    visible_maddrs(dht)     # ["/ip4/127.0.0.1/tcp/41234/p2p/Qm..."]: what a bootstrap peer hands out

Used by the trainer (one DHT per job) and the coordinator (the job's bootstrap peer, its monitor and
checkpoint keeper). Every DHT made here stops with the process that made it: its child process and
libp2p daemon watch their parent and exit when it dies, even by SIGKILL, so a restarted peer can
reuse its identity at once.

Importing this module also keeps every incoming libp2p stream's handler alive while it runs
(:func:`hold_stream_handlers`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from typing import Any

import hivemind
import psutil
from essaim.swarm.errors import DHTError
from essaim.swarm.identity import RSAPrivateKey
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.validation import RecordValidatorBase
from hivemind.utils.auth import AuthorizerBase
from hivemind.utils.multiaddr import Multiaddr

logger = logging.getLogger(__name__)

_HELD: set[asyncio.Task[Any]] = set()  # stream handlers running now (see hold_stream_handlers)


def held(handler: Any) -> Any:
    """``handler`` (an asyncio stream server's client callback) made to hold a strong reference to
    its own task while it runs.

    asyncio keeps only weak references to tasks. The task that runs a stream server's callback is
    held by the connection's protocol, which the event loop holds only while it reads from that
    connection: when the callback is slower than its peer sends, the reader's buffer fills, reading
    is paused, and task, stream and protocol are a cycle that nothing else holds. Python's garbage
    collector then destroys the task, pending ("Task was destroyed but it is pending!"), and the
    call it served is lost. Measured on Python 3.11.7 (tests/unit/swarm/test_dht_streams.py), and
    seen beside busy processes: a peer's handler of another's all-reduce stream was destroyed
    mid-round, and both ended with half of the average."""
    async def run(*args: Any, **kwargs: Any) -> Any:
        task = asyncio.current_task()
        if task is not None:
            _HELD.add(task)
        try:
            return await handler(*args, **kwargs)
        finally:
            if task is not None:
                _HELD.discard(task)

    run.essaim_held = True  # type: ignore[attr-defined]
    return run


def hold_stream_handlers() -> None:
    """Make hivemind's libp2p daemon client hold each incoming stream's handler task while it runs
    (:func:`held`): every call another peer makes to this one (join a group, send its parts, download
    the state) comes in through ``ControlClient._handler``. Idempotent; applies to the daemon
    clients started after it (the DHT's, forked later, and the averagers' replicas)."""
    from hivemind.p2p.p2p_daemon_bindings.control import ControlClient

    if not getattr(ControlClient._handler, "essaim_held", False):
        ControlClient._handler = held(ControlClient._handler)  # type: ignore[method-assign]


hold_stream_handlers()

LOOPBACK_MADDRS = ("/ip4/127.0.0.1/tcp/0",)
PUBLIC_MADDRS = ("/ip4/0.0.0.0/tcp/0",)
DEFAULT_STARTUP_TIMEOUT_S = 60.0
# What every libp2p daemon essaim starts is told. Circuit relay is off. With it on (hivemind's
# default), a daemon that finds itself publicly reachable serves as a relay (circuit v2) for any peer
# that asks: 128 reservations, 16 circuits per peer, 4 GiB and 30 minutes per relayed connection,
# and hivemind's swarm authorizer guards DHT calls only. In the NAT lab a stranger behind one home
# router reached a peer behind another through such a daemon on the "internet" (once the other's
# auto-relay had reserved a slot there, about 4 minutes): that would be the coordinator's averaging
# peers and every public volunteer. essaim needs no relay: NAT-ed volunteers average through the
# averaging peers in client mode (a relay would carry the same bytes in and out again), and
# hivemind's daemon offers no hole punching.
P2P_OPTIONS: dict[str, Any] = {"use_relay": False}
_WATCH_PERIOD_S = 0.5


_watched_in: int | None = None


def _watch_parent(parent_pid: int) -> None:
    """Exit this process (and kill its children, e.g. p2pd) once ``parent_pid`` is gone."""
    global _watched_in
    if _watched_in == os.getpid():
        return
    _watched_in = os.getpid()

    def watch() -> None:
        while True:
            threading.Event().wait(_WATCH_PERIOD_S)
            if os.getppid() != parent_pid:
                try:
                    for child in psutil.Process().children(recursive=True):
                        child.kill()
                except psutil.Error:
                    pass
                os._exit(0)

    threading.Thread(target=watch, name="essaim-parent-watch", daemon=True).start()


class _DHT(hivemind.DHT):
    """hivemind.DHT whose background process leaves with its parent (see the module docstring), and
    whose calls are not lost to the garbage collector (:func:`_keep_tasks_alive`)."""

    def run(self) -> None:
        _watch_parent(self._parent_pid)
        _keep_tasks_alive()
        super().run()


def _keep_tasks_alive() -> None:
    """In the DHT's own process: keep every task until it is done. hivemind's DHT loop starts each call
    (get, store, run_coroutine) as a task it keeps no reference to, and asyncio holds tasks weakly: a
    garbage collection could destroy one mid-call ("Task was destroyed but it is pending!"), and the
    caller waited out its timeout (a trainer failed with "cannot read the DHT's addresses")."""
    create = asyncio.create_task
    running: set[asyncio.Task[Any]] = set()

    def create_task(coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        task = create(coro, **kwargs)
        running.add(task)
        task.add_done_callback(running.discard)
        return task

    asyncio.create_task = create_task  # type: ignore[assignment]


_fork_hook_installed = False


def install_orphan_guard() -> None:
    """Make every process forked from this one from now on (hivemind's averagers) exit when it dies.

    Idempotent. Linux and macOS: a watcher thread in each child polls its parent id.
    """
    global _fork_hook_installed
    if _fork_hook_installed:
        return
    parent = os.getpid()

    def after_fork_in_child() -> None:
        if os.getppid() == parent:
            _watch_parent(parent)

    os.register_at_fork(after_in_child=after_fork_in_child)
    _fork_hook_installed = True


def _maddr_host(maddr: str) -> str | None:
    """The host part of a multiaddr (``/ip4/1.2.3.4/tcp/...`` -> ``1.2.3.4``), or None."""
    parts = maddr.split("/")
    for proto in ("ip4", "ip6", "dns", "dns4", "dns6"):
        if proto in parts:
            index = parts.index(proto) + 1
            return parts[index] if index < len(parts) and parts[index] else None
    return None


def _valid_maddr(maddr: str) -> bool:
    try:
        Multiaddr(maddr)
    except Exception:  # the multiaddr library raises several kinds of errors
        return False
    return _maddr_host(maddr) is not None and "/p2p/" in maddr


def has_public_address() -> bool:
    """Whether one of this machine's network interfaces has a public (globally routable) IP address."""
    for addresses in psutil.net_if_addrs().values():
        for item in addresses:
            host = item.address.split("%", 1)[0]
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                continue
            if ip.is_global:
                return True
    return False


def decide_client_mode(initial_peers: Sequence[str]) -> bool:
    """Whether to run as a DHT client (outgoing connections only) when reachability could not be
    checked (:func:`essaim.swarm.reachability.check_reachability` is the real answer).

    Full mode only where others can surely dial this peer: a swarm on this machine (every initial
    peer on loopback) or a machine with a public address of its own. Anything else, a home network
    included, joins in client mode, which always works: client-mode peers average through the
    coordinator's averaging peer. A private address of the coordinator says nothing about this
    peer (a public coordinator may be handed out by its LAN address too).
    """
    hosts = [_maddr_host(m) for m in initial_peers]
    if not hosts or all(h is not None and _is_loopback(h) for h in hosts):
        return False  # the first peer of a swarm, or a swarm on this machine
    return not has_public_address()


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def maddrs_for_others(maddrs: Sequence[str], *, announce_host: str | None = None) -> list[str]:
    """The multiaddrs a bootstrap peer hands out: those of ``announce_host`` when one is set, else
    every one but loopback and link-local ones (useless to anyone on another machine), unless
    nothing else is left (a swarm on this machine)."""
    if announce_host:
        announced = [m for m in maddrs if _maddr_host(m) == announce_host]
        if announced:
            return announced
    outside = []
    for maddr in maddrs:
        host = _maddr_host(maddr)
        try:
            ip = ipaddress.ip_address(host or "")
        except ValueError:
            outside.append(maddr)
            continue
        if not (ip.is_loopback or ip.is_link_local):
            outside.append(maddr)
    return outside or list(maddrs)


def start_dht(
    *,
    initial_peers: Sequence[str],
    identity_path: str | os.PathLike[str] | None,
    authorizer: AuthorizerBase | None,
    host_maddrs: Sequence[str] = LOOPBACK_MADDRS,
    announce_maddrs: Sequence[str] | None = None,
    client_mode: bool | None = None,
    record_validators: Iterable[RecordValidatorBase] = (),
    private_key: RSAPrivateKey | None = None,
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT_S,
    wait_timeout: float = 5.0,
) -> hivemind.DHT:
    """Start a DHT peer in a background process and join ``initial_peers`` (none: start a new DHT).

    ``client_mode`` None guesses with :func:`decide_client_mode`. ``private_key`` signs this peer's
    protected records (default: the authorizer's key). Raises DHTError with what to check when the
    DHT cannot start or reach its initial peers (a refused swarm token looks like the latter).
    """
    install_orphan_guard()
    initial_peers = list(initial_peers)
    if client_mode is None:
        client_mode = decide_client_mode(initial_peers)
    if private_key is None and authorizer is not None:
        private_key = getattr(authorizer, "_local_private_key", None)
    validators: list[RecordValidatorBase] = [RSASignatureValidator(private_key), *record_validators]
    for maddr in initial_peers:
        if not _valid_maddr(maddr):
            raise DHTError(f"initial peer {maddr!r} is not a multiaddr like /ip4/1.2.3.4/tcp/31337/p2p/Qm...")
    kwargs: dict[str, object] = dict(
        host_maddrs=list(host_maddrs),
        client_mode=client_mode,
        authorizer=authorizer,
        record_validators=validators,
        startup_timeout=startup_timeout,
        wait_timeout=wait_timeout,
        **P2P_OPTIONS,
    )
    if identity_path is not None:
        kwargs["identity_path"] = os.fspath(identity_path)
    if announce_maddrs:
        kwargs["announce_maddrs"] = list(announce_maddrs)
    dht = _DHT(initial_peers=initial_peers or None, start=False, **kwargs)  # type: ignore[arg-type]
    try:
        dht.run_in_background(await_ready=True, timeout=startup_timeout + 2 * wait_timeout)
    except Exception as exc:
        _stop_quietly(dht)
        raise _translate(exc, initial_peers) from None
    dht.essaim_private_key = private_key  # records.publish_progress signs with it
    dht.essaim_authorizer = authorizer  # the averagers check callers' swarm tokens with it (swarm.admission)
    logger.info("joined the DHT as %s (client mode: %s)", dht.peer_id, client_mode)
    return dht


def _stop_quietly(dht: hivemind.DHT) -> None:
    try:
        if dht.is_alive():
            dht.terminate()
            dht.join(5)
    except (OSError, ValueError, AssertionError):
        pass


def _translate(exc: BaseException, initial_peers: Sequence[str]) -> DHTError:
    text = str(exc) or type(exc).__name__
    if "already taken" in text:
        return DHTError(
            "this identity is already in use by a running peer; stop the other trainer using the same "
            "identity (or wait a few seconds after it stopped) and try again"
        )
    if "bootstrap failed" in text or "responded to a ping" in text:
        return DHTError(
            f"none of the initial peers answered ({', '.join(initial_peers)}): they may be down or "
            "unreachable, or they refused this peer's swarm token (expired, or for another job); "
            "ask the coordinator for a fresh assignment"
        )
    if "failed to start" in text.lower() or "p2pd" in text:
        return DHTError(f"the libp2p daemon did not start: {text}; check that port binding is allowed here")
    if isinstance(exc, TimeoutError):
        return DHTError("the DHT did not start in time; check the network and the initial peers")
    return DHTError(f"the DHT did not start: {text}")


def visible_maddrs(dht: hivemind.DHT, *, timeout: float = 10.0) -> list[str]:
    """The multiaddrs (with ``/p2p/<peer id>``) other peers can use to reach ``dht``."""
    try:
        future = dht.run_coroutine(_visible, return_future=True)
        return [str(m) for m in future.result(timeout)]
    except Exception as exc:
        raise DHTError(f"cannot read the DHT's addresses: {exc}") from None


async def _visible(_dht: hivemind.DHT, node: object) -> list[object]:
    return await node.get_visible_maddrs(latest=True)  # type: ignore[attr-defined]


def shutdown_dht(dht: hivemind.DHT, *, timeout: float = 5.0) -> None:
    """Stop ``dht`` and its libp2p daemon, forcefully after ``timeout`` seconds."""
    try:
        dht.shutdown_timeout = timeout
        dht.shutdown()
    except (OSError, ValueError, BrokenPipeError) as exc:
        logger.debug("DHT shutdown: %s", exc)
    if dht.is_alive():
        _stop_quietly(dht)
