"""The running app's local control endpoint: one JSON request, one JSON reply, per connection.

    server = ControlServer(paths.control_address, handler=supervisor.handle_request)
    server.start() ... server.stop()
    request(paths.control_address, {"cmd": "status"})     # {"ok": true, "status": {...}}

POSIX: a unix socket in the user's runtime dir (mode 0600, in a 0700 dir), so only the user can
talk to the app. Windows: a localhost TCP port; the port and a random token are written to a file
readable only by the user, and every request must carry the token. Requests: ``status``,
``pause`` (``seconds`` optional), ``resume``, ``finish``, ``config_set`` (``key``, ``value``),
``config_show``. Replies: ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.
Used by the CLI (client side) and the supervisor (server side).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from essaim.client.errors import AppNotRunning, ControlError

logger = logging.getLogger(__name__)
Handler = Callable[[dict[str, Any]], dict[str, Any]]
MAX_REQUEST = 64 * 1024
_WINDOWS = sys.platform == "win32"


class ControlServer:
    """Serves requests on a thread until :meth:`stop`; refuses to start if another app is listening."""

    def __init__(self, address: Path, *, handler: Handler) -> None:
        self.address = Path(address)
        self.handler = handler
        self._sock: socket.socket | None = None
        self._token = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.address.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if _is_listening(self.address):
            raise ControlError(
                f"another essaim app is already running (it answers on {self.address}); "
                "use `essaim status`, or stop it before starting a new one"
            )
        if _WINDOWS:
            self._sock = socket.create_server(("127.0.0.1", 0))
            self._token = secrets.token_urlsafe(32)
            _write_private(
                self.address, json.dumps({"port": self._sock.getsockname()[1], "token": self._token})
            )
        else:
            with contextlib.suppress(FileNotFoundError):
                self.address.unlink()  # a stale socket left by a crashed app
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old = os.umask(0o177)
            try:
                sock.bind(str(self.address))
            finally:
                os.umask(old)
            sock.listen(8)
            self._sock = sock
        self._sock.settimeout(0.5)
        self._thread = threading.Thread(target=self._serve, name="control", daemon=True)
        self._thread.start()
        logger.info("control endpoint at %s", self.address)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(3)
        if self._sock is not None:
            self._sock.close()
        with contextlib.suppress(OSError):
            self.address.unlink()

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stop.is_set():
                    return
                continue
            with conn:
                self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            request = json.loads(_read_line(conn))
            if not isinstance(request, dict):
                raise ValueError("a request is a JSON object")
            if _WINDOWS and not secrets.compare_digest(str(request.pop("token", "")), self._token):
                reply: dict[str, Any] = {"ok": False, "error": "bad control token"}
            else:
                reply = self.handler(request)
        except (ValueError, OSError) as exc:
            reply = {"ok": False, "error": f"bad request: {exc}"}
        except Exception as exc:  # the handler's bug must not kill the endpoint
            logger.exception("control request failed")
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        with contextlib.suppress(OSError):
            conn.sendall(json.dumps(reply, default=str).encode() + b"\n")


def _read_line(conn: socket.socket) -> bytes:
    data = b""
    while b"\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST:
            raise ValueError("request too large")
    return data.split(b"\n", 1)[0]


def _connect(address: Path, timeout: float) -> tuple[socket.socket, str]:
    if _WINDOWS:
        try:
            info = json.loads(Path(address).read_text())
        except (OSError, ValueError):
            raise AppNotRunning() from None
        sock = socket.create_connection(("127.0.0.1", int(info["port"])), timeout=timeout)
        return sock, str(info["token"])
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(address))
    except OSError:
        sock.close()
        raise
    return sock, ""


def _is_listening(address: Path) -> bool:
    try:
        sock, _ = _connect(address, 1.0)
    except (OSError, AppNotRunning):
        return False
    sock.close()
    return True


def request(address: Path, message: dict[str, Any], *, timeout: float = 10.0) -> dict[str, Any]:
    """Send one request to the running app; AppNotRunning when nothing answers, ControlError on refusal."""
    try:
        sock, token = _connect(Path(address), timeout)
    except (FileNotFoundError, ConnectionRefusedError):
        raise AppNotRunning() from None
    except OSError as exc:
        raise AppNotRunning(
            f"cannot reach the essaim app at {address} ({exc}); is it running? start it with `essaim run --headless`"
        ) from None
    with sock:
        payload = dict(message, token=token) if token else message
        try:
            sock.sendall(json.dumps(payload).encode() + b"\n")
            reply = json.loads(_read_line(sock) or b"null")
        except (OSError, ValueError) as exc:
            raise ControlError(
                f"the essaim app did not answer ({exc}); see its log with `essaim status`"
            ) from None
    if not isinstance(reply, dict):
        raise ControlError("the essaim app sent an empty reply; it may be stopping")
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error") or "the essaim app refused the request"))
    return reply


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
