"""A small gRPC client for the volunteer app: Register, Heartbeat and GetAssignment over HTTP/2.

    with LiteClient("127.0.0.1:50051", token=token, timeout=10.0) as client:
        reply = client.heartbeat(volunteer_id=vid, state="waiting", reason="waiting: user active")

It exists for the footprint of the always-on app: grpcio's C core costs about 20 MB of resident
memory in a process that otherwise needs about 30, so the app's coordinator link talks gRPC itself,
through the pure-Python ``h2`` library. The CLI and the trainer keep :class:`CoordinatorClient`.

What it supports is what those three calls need, and no more:

- unary calls only, one at a time, on one HTTP/2 connection opened on the first call and reused;
  over TLS (ALPN h2, the certificate and host name verified) unless the address is loopback or
  ``http://...``, then cleartext with prior knowledge, as :class:`CoordinatorClient` (:mod:`.tls`);
- the standard wire format (``POST /essaim.v1.Coordinator/<Method>``, ``application/grpc``,
  ``te: trailers``, ``grpc-timeout``, the bearer token as ``authorization``, length-prefixed
  uncompressed messages); the protocol version travels in each request's header, as with grpcio;
- flow control both ways, replies of any number of DATA frames up to ``MAX_MESSAGE_BYTES``;
- a timeout for connecting and for each call; a connection that was closed, reset or told to go
  away (GOAWAY) is dropped and the next call opens a new one; a call refused by a GOAWAY before
  the coordinator saw it is sent again once on a new connection;
- errors as :mod:`essaim.protocol.errors` classes, mapped from ``grpc-status`` by the function
  that maps grpcio's (:func:`~essaim.protocol.errors.from_grpc_status`); an unreachable
  coordinator, a timeout or a broken connection is Unavailable and names the address.

Not supported: streaming calls, compression, name resolution beyond ``HOST:PORT``.
"""

from __future__ import annotations

import contextlib
import math
import socket
import ssl
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
from essaim.protocol.auth_metadata import bearer_metadata
from essaim.protocol.errors import EssaimError, from_grpc_status
from essaim.protocol.tls import resolve
from essaim.protocol.version import __version__
from essaim.protocol.volunteer_calls import VolunteerCalls

SERVICE_PATH = "/essaim.v1.Coordinator/"
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
"""The largest reply accepted, as :class:`CoordinatorClient` accepts."""
READ_BYTES = 65536
_HTTP_TO_GRPC = {400: "INTERNAL", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "UNIMPLEMENTED"}
_HTTP_TO_GRPC.update(dict.fromkeys((429, 502, 503, 504), "UNAVAILABLE"))
"""gRPC's mapping of an HTTP status that is not 200 to a status code (when no grpc-status came)."""
_RESET_TO_GRPC: dict[int, str] = {
    h2.errors.ErrorCodes.REFUSED_STREAM: "UNAVAILABLE",
    h2.errors.ErrorCodes.CANCEL: "CANCELLED",
    h2.errors.ErrorCodes.ENHANCE_YOUR_CALM: "RESOURCE_EXHAUSTED",
    h2.errors.ErrorCodes.INADEQUATE_SECURITY: "PERMISSION_DENIED",
}
"""gRPC's mapping of RST_STREAM error codes; any other reset is INTERNAL."""
_STATUS_NAMES = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
]
"""gRPC status code names by number."""


class _Refused(Exception):
    """The coordinator went away before it saw this call (GOAWAY): sending it again is safe."""


class _Reply:
    """What came back on one stream so far."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.trailers: dict[str, str] = {}
        self.body = bytearray()
        self.ended = False
        self.reset: int | None = None

    @property
    def done(self) -> bool:
        return self.ended or self.reset is not None

    def update(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            self.headers = dict(event.headers)  # type: ignore[arg-type]
        elif isinstance(event, h2.events.TrailersReceived):
            self.trailers = dict(event.headers)  # type: ignore[arg-type]
        elif isinstance(event, h2.events.DataReceived):
            self.body += event.data or b""
            if len(self.body) > MAX_MESSAGE_BYTES + 5:
                raise h2.exceptions.ProtocolError("the coordinator's reply is larger than 64 MiB")
        elif isinstance(event, h2.events.StreamEnded):
            self.ended = True
        elif isinstance(event, h2.events.StreamReset):
            self.reset = int(event.error_code or 0)


class LiteClient(VolunteerCalls):
    """Blocking client of one coordinator for the volunteer app's three calls; thread-safe, one call at a time."""

    def __init__(
        self, address: str, *, token: str | None = None, timeout: float = 10.0, connect_timeout: float = 5.0,
        ca_file: str | Path | None = None,
    ) -> None:
        self.address = address
        self.endpoint = resolve(address, ca_file=ca_file)
        self._tls = self.endpoint.ssl_context() if self.endpoint.tls else None
        self.token = token
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._conn: h2.connection.H2Connection | None = None
        self._replies: dict[int, _Reply] = {}
        self._going_away: int | None = None  # a GOAWAY's last stream id: streams above it were not seen

    # ---- plumbing ----

    def __enter__(self) -> LiteClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (a call in flight on another thread fails with Unavailable)."""
        sock, self._sock, self._conn = self._sock, None, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def call(self, method: str, request: Any, reply_type: Any) -> Any:
        """Send ``request`` to ``method`` and return the ``reply_type`` message, or raise an EssaimError."""
        payload = request.SerializeToString()
        frame = b"\x00" + len(payload).to_bytes(4, "big") + payload
        deadline = time.monotonic() + self.timeout
        with self._lock:
            body = self._exchange(method, frame, deadline, resend=True)
        try:
            return reply_type.FromString(body)
        except Exception:  # protobuf's DecodeError: a broken reply, not a transport error
            raise EssaimError(
                f"the coordinator at {self.address} sent a {method} reply that cannot be read"
            ) from None

    def _exchange(self, method: str, frame: bytes, deadline: float, *, resend: bool) -> bytes:
        try:
            self._ensure_connected(deadline)
            stream_id = self._send(method, frame, deadline)
            reply = self._receive(stream_id, deadline)
        except _Refused:
            self.close()
            if resend:
                return self._exchange(method, frame, deadline, resend=False)
            raise from_grpc_status("UNAVAILABLE", "the coordinator is going away", self.address) from None
        except TimeoutError:
            self.close()
            raise from_grpc_status("DEADLINE_EXCEEDED", "Deadline Exceeded", self.address) from None
        except (OSError, h2.exceptions.H2Error) as exc:
            self.close()
            raise from_grpc_status("UNAVAILABLE", _describe(exc), self.address) from None
        if self._going_away is not None:  # the next call opens a new connection
            self.close()
        return self._message(method, reply)

    # ---- the connection ----

    def _ensure_connected(self, deadline: float) -> None:
        if self._sock is not None and not self._still_open():
            self.close()
        if self._sock is not None:
            return
        endpoint = self.endpoint
        sock = socket.create_connection((endpoint.host, endpoint.port),
                                        timeout=min(self.connect_timeout, _remaining(deadline)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._tls is not None:
            try:
                sock = self._tls.wrap_socket(sock, server_hostname=endpoint.host)
            except BaseException:
                sock.close()
                raise
            if sock.selected_alpn_protocol() != "h2":
                sock.close()
                raise ConnectionRefusedError(f"the coordinator at {self.address} does not speak HTTP/2 over TLS")
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        conn = h2.connection.H2Connection(config=config)
        conn.initiate_connection()
        self._sock, self._conn, self._replies, self._going_away = sock, conn, {}, None
        self._flush(deadline)

    def _still_open(self) -> bool:
        """Read what arrived while idle (settings, pings, GOAWAY, EOF); False when the connection is done."""
        try:
            sock, _ = self._live()
            sock.settimeout(0)  # drain without waiting (TLS records that carry no data included)
            while True:
                try:
                    data = sock.recv(READ_BYTES)
                except (BlockingIOError, ssl.SSLWantReadError):
                    break
                if not data:
                    return False
                self._handle(data)
            self._flush(time.monotonic() + self.connect_timeout)
        except (OSError, h2.exceptions.H2Error):
            return False
        return self._going_away is None

    def _live(self) -> tuple[socket.socket, h2.connection.H2Connection]:
        sock, conn = self._sock, self._conn
        if sock is None or conn is None:
            raise ConnectionAbortedError("the connection was closed")
        return sock, conn

    def _flush(self, deadline: float) -> None:
        sock, conn = self._live()
        data = conn.data_to_send()
        if data:
            sock.settimeout(_remaining(deadline))
            sock.sendall(data)

    def _read(self, deadline: float) -> None:
        sock, _ = self._live()
        sock.settimeout(_remaining(deadline))
        data = sock.recv(READ_BYTES)
        if not data:
            raise ConnectionResetError("the coordinator closed the connection")
        self._handle(data)
        self._flush(deadline)

    def _handle(self, data: bytes) -> None:
        _, conn = self._live()
        for event in conn.receive_data(data):
            reply = self._replies.get(getattr(event, "stream_id", None) or 0)
            if isinstance(event, h2.events.DataReceived):
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.ConnectionTerminated):
                self._going_away = event.last_stream_id or 0
                if event.error_code != h2.errors.ErrorCodes.NO_ERROR:
                    for stream_id, pending in self._replies.items():
                        if stream_id <= self._going_away and not pending.ended:
                            raise ConnectionResetError(
                                f"the coordinator ended the connection ({event.error_code!r})"
                            )
            if reply is not None:
                reply.update(event)

    # ---- one call ----

    def _send(self, method: str, frame: bytes, deadline: float) -> int:
        _, conn = self._live()
        stream_id = conn.get_next_available_stream_id()
        reply = self._replies[stream_id] = _Reply()
        headers = [
            (":method", "POST"),
            (":scheme", "https" if self.endpoint.tls else "http"),
            (":path", SERVICE_PATH + method),
            (":authority", self.endpoint.target),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("grpc-timeout", f"{max(math.ceil(_remaining(deadline) * 1000), 1)}m"),
            ("user-agent", f"essaim-lite/{__version__}"),
            *bearer_metadata(self.token),
        ]
        conn.send_headers(stream_id, headers)
        sent = 0
        while sent < len(frame) and not reply.done:
            room = min(
                conn.local_flow_control_window(stream_id), conn.max_outbound_frame_size, len(frame) - sent
            )
            if room > 0:
                conn.send_data(stream_id, frame[sent : sent + room], end_stream=sent + room == len(frame))
                sent += room
                self._flush(deadline)
            else:  # the coordinator's window is full: wait for its WINDOW_UPDATE
                self._flush(deadline)
                self._check_refused(stream_id)
                self._read(deadline)
        return stream_id

    def _receive(self, stream_id: int, deadline: float) -> _Reply:
        reply = self._replies[stream_id]
        while not reply.done:
            self._check_refused(stream_id)
            self._read(deadline)
        del self._replies[stream_id]
        return reply

    def _check_refused(self, stream_id: int) -> None:
        if self._going_away is not None and stream_id > self._going_away:
            raise _Refused()

    def _message(self, method: str, reply: _Reply) -> bytes:
        status = reply.trailers.get("grpc-status", reply.headers.get("grpc-status"))
        if status is None and reply.reset is not None:
            code_name = _RESET_TO_GRPC.get(reply.reset, "INTERNAL")
            raise from_grpc_status(
                code_name, f"the call was reset (HTTP/2 error {reply.reset})", self.address
            )
        if status is None:
            http = reply.headers.get(":status", "")
            code_name = (
                _HTTP_TO_GRPC.get(int(http), "UNKNOWN") if http.isdigit() and http != "200" else "UNKNOWN"
            )
            raise from_grpc_status(
                code_name, f"the coordinator answered HTTP {http} without a gRPC status", self.address
            )
        if status != "0":
            code = int(status) if status.isdigit() else 2
            name = _STATUS_NAMES[code] if code < len(_STATUS_NAMES) else "UNKNOWN"
            message = reply.trailers.get("grpc-message", reply.headers.get("grpc-message", ""))
            raise from_grpc_status(name, unquote(message, errors="replace"), self.address)
        body = bytes(reply.body)
        if len(body) < 5 or body[0] != 0 or int.from_bytes(body[1:5], "big") != len(body) - 5:
            raise EssaimError(
                f"the coordinator at {self.address} sent a {method} reply that is not one uncompressed gRPC message"
            )
        return body[5:]

    def _volunteer_call(self, method: str, request: Any, reply_type: type) -> Any:
        return self.call(method, request, reply_type)


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__
