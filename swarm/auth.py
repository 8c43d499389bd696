"""Swarm tokens: who may use a job's DHT. The coordinator signs one per volunteer per job; every
DHT request and response carries it, and peers refuse those whose token does not check out.

What a token holds (a hivemind ``AccessToken`` protobuf, base64url-encoded behind ``essaim-swarm-v1.``):

    username         {"job": <job id>, "volunteer": <volunteer id>}  (compact JSON, sorted keys)
    public_key       the peer's RSA public key (OpenSSH form): only the holder of its private key can
                     sign requests with this token
    expiration_time  unix seconds (decimal text); the token is refused after it
    signature        the coordinator's RSA-PSS/SHA-256 signature (base64) over
                     b"essaim-swarm-token-v1|" + username + b"|" + public_key + b"|" + expiration_time

How it is checked (:func:`verify_swarm_token`, :meth:`SwarmAuthorizer.is_token_valid`): the signature
must verify with the coordinator's public key (Assignment.coordinator_public_key), the job must be
this DHT's job and the expiry in the future. hivemind's ``TokenAuthorizerBase`` does the rest: each
request is signed with the private key matching the token's ``public_key``, carries a fresh nonce
and a timestamp within a minute (no replays), and responses are checked the same way, so a peer
without a valid token can neither read nor store records, nor answer others' lookups.

Tokens are short-lived: a banned volunteer gets no new one, and its current one runs out. A
``refresh`` callable (for instance :func:`token_file_refresher`) supplies a fresh token before the
current one expires; it runs inside the DHT's process, so it must not rely on the caller's threads.

Bans reach the swarm sooner than that through a revocation list: the job's runner (the bootstrap
peer) publishes the coordinator-signed list of banned volunteers' keys under ``<job>_revoked`` in
the DHT; every peer fetches it (:func:`watch_revocations`, every few seconds) into a file its
authorizer re-reads (``revocations_path``), and from then on refuses any token issued for those keys.
A list that does not verify with the coordinator's key, or is older than the one held, is ignored.

Limit: hivemind checks tokens on DHT calls only. The averagers' own streams (all-reduce, state
download) are reached through peer ids and keys found in the DHT, which a peer without a token
cannot read, but they do not check tokens themselves.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from essaim.swarm.errors import AuthError
from essaim.swarm.identity import RSAPrivateKey, RSAPublicKey, load_public_key, openssh_public_key
from google.protobuf.message import DecodeError
from hivemind.proto.auth_pb2 import AccessToken
from hivemind.utils.auth import TokenAuthorizerBase

logger = logging.getLogger(__name__)

TOKEN_PREFIX = "essaim-swarm-v1."
_SIGNED_PREFIX = b"essaim-swarm-token-v1"
REFRESH_EVERY_S = 5.0
_REVOKED_PREFIX = b"essaim-swarm-revoked-v1"  # the same bytes as essaim.coordinator.swarm_keys signs
REVOCATIONS_RECHECK_S = 1.0
REVOCATIONS_EXPIRATION_S = 600.0
REFRESH_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class SwarmTokenInfo:
    """What a verified token says."""

    job_id: str
    volunteer_id: str
    public_key: bytes  # OpenSSH form
    expires_at: float


def _signed_bytes(token: AccessToken) -> bytes:
    return b"|".join([_SIGNED_PREFIX, token.username.encode(), bytes(token.public_key), token.expiration_time.encode()])


def issue_swarm_token(
    coordinator_key: RSAPrivateKey,
    *,
    job_id: str,
    volunteer_id: str,
    peer_public_key: bytes,
    ttl_s: float,
    now: float | None = None,
) -> tuple[str, float]:
    """A token letting ``peer_public_key``'s holder use job ``job_id``'s DHT for ``ttl_s`` seconds.

    Returns ``(token, expires_at)``. ``peer_public_key`` may be OpenSSH, PEM or DER bytes.
    """
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    expires_at = (time.time() if now is None else now) + ttl_s
    token = AccessToken(
        username=json.dumps({"job": job_id, "volunteer": volunteer_id}, separators=(",", ":"), sort_keys=True),
        public_key=openssh_public_key(peer_public_key),
        expiration_time=repr(float(expires_at)),
    )
    token.signature = coordinator_key.sign(_signed_bytes(token))
    encoded = base64.urlsafe_b64encode(token.SerializeToString()).decode().rstrip("=")
    return TOKEN_PREFIX + encoded, expires_at


def decode_swarm_token(token: str) -> AccessToken:
    """The AccessToken inside a token string (not verified). Raises AuthError when malformed."""
    if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX):
        raise AuthError("the swarm token is missing or malformed; ask the coordinator for a new assignment")
    body = token[len(TOKEN_PREFIX) :]
    try:
        raw = base64.b64decode(body + "=" * (-len(body) % 4), altchars=b"-_", validate=True)
        access = AccessToken.FromString(raw)
    except (binascii.Error, ValueError, DecodeError):
        access = None
    if access is None or not access.signature or not access.public_key or not access.username:
        raise AuthError("the swarm token is malformed; ask the coordinator for a new assignment")
    return access


def check_access_token(
    token: AccessToken, coordinator_public_key: RSAPublicKey, *, job_id: str, now: float | None = None
) -> SwarmTokenInfo:
    """Verify an AccessToken; raises AuthError saying why it is refused."""
    if not token.signature or not coordinator_public_key.verify(_signed_bytes(token), token.signature):
        raise AuthError("the swarm token is not signed by this job's coordinator")
    try:
        claims = json.loads(token.username)
        token_job, volunteer = str(claims["job"]), str(claims["volunteer"])
        expires_at = float(token.expiration_time)
    except (ValueError, TypeError, KeyError):
        raise AuthError("the swarm token's claims are malformed") from None
    if token_job != job_id:
        raise AuthError(f"the swarm token is for job {token_job!r}, not {job_id!r}")
    if expires_at <= (time.time() if now is None else now):
        raise AuthError("the swarm token has expired; the volunteer app fetches a new one from the coordinator")
    return SwarmTokenInfo(token_job, volunteer, bytes(token.public_key), expires_at)


def verify_swarm_token(
    token: str, coordinator_public_key: bytes | RSAPublicKey, *, job_id: str, now: float | None = None
) -> SwarmTokenInfo:
    """Decode and verify a token string (see the module docstring); raises AuthError when refused."""
    public = (
        coordinator_public_key
        if isinstance(coordinator_public_key, RSAPublicKey)
        else load_public_key(coordinator_public_key)
    )
    return check_access_token(decode_swarm_token(token), public, job_id=job_id, now=now)


def token_file_refresher(path: str | Path) -> Callable[[], str | None]:
    """A ``refresh`` callable that reads the current token from a file (the trainer rewrites it)."""
    path = Path(path)

    def refresh() -> str | None:
        try:
            return path.read_text().strip() or None
        except OSError:
            return None

    return refresh


def revocations_key(job_id: str) -> str:
    return f"{job_id}_revoked"


def check_revocations(value: Any, coordinator_public_key: RSAPublicKey, *, job_id: str) -> tuple[float, frozenset[bytes]]:
    """``(issued_at, revoked OpenSSH keys)`` of a signed revocation list; raises AuthError when refused."""
    try:
        keys = [str(k) for k in value["keys"]]
        issued_at = float(value["issued_at"])
        signature = str(value["signature"]).encode()
        listed_job = str(value["job"])
    except (TypeError, KeyError, ValueError):
        raise AuthError("the revocation list is malformed") from None
    if listed_job != job_id:
        raise AuthError(f"the revocation list is for job {listed_job!r}, not {job_id!r}")
    signed = b"|".join([_REVOKED_PREFIX, job_id.encode(), repr(issued_at).encode(), ",".join(sorted(keys)).encode()])
    if not coordinator_public_key.verify(signed, signature):
        raise AuthError("the revocation list is not signed by this job's coordinator")
    return issued_at, frozenset(k.encode() for k in keys)


def _publish_signed(dht: Any, key: str, value: dict[str, Any], owner_key: RSAPrivateKey, timeout: float) -> bool:
    """Store a coordinator-signed record in the job's DHT, under the publisher's own subkey."""
    from essaim.swarm.records import owner_subkey
    from hivemind.utils import get_dht_time

    future = dht.store(key, subkey=owner_subkey(owner_key), value=value,
                       expiration_time=get_dht_time() + REVOCATIONS_EXPIRATION_S, return_future=True)
    return bool(future.result(timeout))


def _newest_signed(dht: Any, key: str, check: Callable[[Any], Any], what: str, timeout: float) -> tuple[Any, Any]:
    """``(check(value), value)`` of the record under ``key`` whose ``check`` is the greatest (it
    raises AuthError for one the coordinator did not sign), or ``(None, None)``."""
    found = dht.get(key, latest=True, return_future=True).result(timeout)
    best: tuple[Any, Any] = (None, None)
    if found is not None and isinstance(found.value, dict):
        for item in found.value.values():
            value = getattr(item, "value", None)
            try:
                checked = check(value)
            except AuthError as exc:
                logger.debug("ignoring a %s: %s", what, exc)
                continue
            if best[0] is None or checked > best[0]:
                best = (checked, value)
    return best


def publish_revocations(dht: Any, job_id: str, value: dict[str, Any], *, owner_key: RSAPrivateKey,
                        timeout: float = 10.0) -> bool:
    """Store a signed revocation list in the job's DHT, under the publisher's own subkey."""
    return _publish_signed(dht, revocations_key(job_id), value, owner_key, timeout)


def fetch_revocations(dht: Any, job_id: str, coordinator_public_key: RSAPublicKey, *,
                      timeout: float = 10.0) -> dict[str, Any] | None:
    """The newest revocation list in the DHT that the coordinator signed, or None."""
    _, value = _newest_signed(dht, revocations_key(job_id),
                              lambda v: check_revocations(v, coordinator_public_key, job_id=job_id)[0],
                              "revocation list", timeout)
    return value


def write_revocations(path: str | Path, value: dict[str, Any]) -> None:
    """Hand a revocation list to the authorizer (it re-reads the file), atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def watch_revocations(dht: Any, job_id: str, coordinator_public_key: bytes | RSAPublicKey, path: str | Path,
                      stop: threading.Event, *, every: float = 5.0) -> threading.Thread:
    """A daemon thread copying the newest signed revocation list from the DHT to ``path``."""
    public = (coordinator_public_key if isinstance(coordinator_public_key, RSAPublicKey)
              else load_public_key(coordinator_public_key))

    def loop() -> None:
        held = -1.0
        while not stop.wait(every):
            try:
                value = fetch_revocations(dht, job_id, public, timeout=every * 2)
            except Exception as exc:  # the DHT may be shutting down, or briefly unreachable
                logger.debug("could not read the revocation list: %s", exc)
                continue
            if value is not None and float(value["issued_at"]) > held:
                held = float(value["issued_at"])
                write_revocations(path, value)
                logger.info("revocation list of %s: %d key(s) refused", time.strftime("%H:%M:%S",
                            time.localtime(held)), len(value["keys"]))

    thread = threading.Thread(target=loop, name="essaim-revocations", daemon=True)
    thread.start()
    return thread


_RESET_PREFIX = b"essaim-swarm-reset-v1"  # the same bytes as essaim.coordinator.swarm_keys signs


def resets_key(job_id: str) -> str:
    return f"{job_id}_reset"


def check_reset(value: Any, coordinator_public_key: RSAPublicKey, *, job_id: str) -> tuple[int, int]:
    """``(generation, epoch)`` of a signed state reset; raises AuthError when refused."""
    try:
        generation, epoch = int(value["generation"]), int(value["epoch"])
        issued_at = float(value["issued_at"])
        signature = str(value["signature"]).encode()
        listed_job = str(value["job"])
    except (TypeError, KeyError, ValueError):
        raise AuthError("the state reset is malformed") from None
    if listed_job != job_id:
        raise AuthError(f"the state reset is for job {listed_job!r}, not {job_id!r}")
    signed = b"|".join([_RESET_PREFIX, job_id.encode(), str(generation).encode(), str(epoch).encode(),
                        repr(issued_at).encode()])
    if not coordinator_public_key.verify(signed, signature):
        raise AuthError("the state reset is not signed by this job's coordinator")
    return generation, epoch


def publish_reset(dht: Any, job_id: str, value: dict[str, Any], *, owner_key: RSAPrivateKey,
                  timeout: float = 10.0) -> bool:
    """Store a signed state reset in the job's DHT, under the publisher's own subkey."""
    return _publish_signed(dht, resets_key(job_id), value, owner_key, timeout)


def fetch_reset(dht: Any, job_id: str, coordinator_public_key: RSAPublicKey, *,
                timeout: float = 10.0) -> tuple[int, int] | None:
    """``(generation, epoch)`` of the newest state reset in the DHT that the coordinator signed."""
    reset, _ = _newest_signed(dht, resets_key(job_id),
                              lambda v: check_reset(v, coordinator_public_key, job_id=job_id), "state reset", timeout)
    return reset


def watch_resets(dht: Any, job_id: str, coordinator_public_key: bytes | RSAPublicKey, stop: threading.Event,
                 on_reset: Callable[[int], None], *, every: float = 5.0) -> threading.Thread:
    """A daemon thread calling ``on_reset(epoch)`` for each state reset newer than the one in the
    DHT when it started (a newcomer already loaded the state the earlier ones asked for)."""
    public = (coordinator_public_key if isinstance(coordinator_public_key, RSAPublicKey)
              else load_public_key(coordinator_public_key))

    def loop() -> None:
        held: int | None = None
        wait = 0.0  # the first look at once: the baseline
        while not stop.wait(wait):
            wait = every
            try:
                reset = fetch_reset(dht, job_id, public, timeout=every * 2)
            except Exception as exc:  # the DHT may be shutting down, or briefly unreachable
                logger.debug("could not read the state reset: %s", exc)
                continue
            generation = reset[0] if reset is not None else 0
            if held is not None and generation > held and reset is not None:
                logger.warning("the coordinator rolled the job back at epoch %d: reloading its state", reset[1])
                on_reset(reset[1])
            held = generation if held is None else max(held, generation)

    thread = threading.Thread(target=loop, name="essaim-resets", daemon=True)
    thread.start()
    return thread


class SwarmAuthorizer(TokenAuthorizerBase):
    """hivemind authorizer for one job's DHT: signs with ``local_private_key``, shows ``token``, and
    accepts only peers whose token the coordinator signed for ``job_id`` and that has not expired.

    ``refresh`` (optional) returns a newer token string (or None); it is called, with a timeout,
    when the current token has less than ``refresh_margin_s`` seconds left (default: a third of
    its life, at most two minutes).
    """

    def __init__(
        self,
        local_private_key: RSAPrivateKey,
        token: str,
        coordinator_public_key: bytes | RSAPublicKey,
        job_id: str,
        *,
        refresh: Callable[[], str | None] | None = None,
        refresh_margin_s: float | None = None,
        revocations_path: str | Path | None = None,
    ) -> None:
        super().__init__(local_private_key)
        self.job_id = job_id
        self._coordinator_key = (
            coordinator_public_key
            if isinstance(coordinator_public_key, RSAPublicKey)
            else load_public_key(coordinator_public_key)
        )
        self._refresh = refresh
        self._refresh_margin_s = refresh_margin_s
        self._own_key = self.local_public_key.to_bytes()
        self._token = self._check_own(token)
        self._issued_life = max(1.0, float(self._token.expiration_time) - time.time())
        self._verified: dict[bytes, float] = {}
        self._last_refresh = 0.0
        self._revocations_path = Path(revocations_path) if revocations_path else None
        self._revocations_seen: tuple[float, float] = (0.0, -1.0)  # (checked at, file mtime)
        self._revoked_issued_at = -1.0
        self.revoked: frozenset[bytes] = frozenset()

    def _check_own(self, token: str) -> AccessToken:
        access = decode_swarm_token(token)
        check_access_token(access, self._coordinator_key, job_id=self.job_id)
        if bytes(access.public_key) != self._own_key:
            raise AuthError("the swarm token was issued for another peer's key; register this identity again")
        return access

    @property
    def expires_at(self) -> float:
        return float(self._token.expiration_time)

    async def get_token(self) -> AccessToken:
        due = time.monotonic() - self._last_refresh >= REFRESH_EVERY_S
        if self._refresh is not None and due and self.does_token_need_refreshing(self._token):
            self._last_refresh = time.monotonic()
            loop = asyncio.get_running_loop()
            try:
                fresh = await asyncio.wait_for(loop.run_in_executor(None, self._refresh), REFRESH_TIMEOUT_S)
                if fresh:
                    access = self._check_own(fresh)
                    if float(access.expiration_time) > float(self._token.expiration_time):
                        self._issued_life = max(1.0, float(access.expiration_time) - time.time())
                        self._token = access
            except (AuthError, TimeoutError, OSError) as exc:
                logger.warning("could not refresh the swarm token: %s", exc)
        if float(self._token.expiration_time) <= time.time():
            logger.error("the swarm token has expired and no fresh one is available; DHT calls will be refused")
        return self._token

    def _reload_revocations(self) -> None:
        checked_at, mtime = self._revocations_seen
        if self._revocations_path is None or time.monotonic() - checked_at < REVOCATIONS_RECHECK_S:
            return
        try:
            current = self._revocations_path.stat().st_mtime
        except OSError:
            current = -1.0
        self._revocations_seen = (time.monotonic(), current)
        if current == mtime or current < 0:
            return
        try:
            value = json.loads(self._revocations_path.read_text())
            issued_at, revoked = check_revocations(value, self._coordinator_key, job_id=self.job_id)
        except (OSError, ValueError, AuthError) as exc:
            logger.warning("ignoring the revocation list %s: %s", self._revocations_path, exc)
            return
        if issued_at > self._revoked_issued_at:
            self._revoked_issued_at, self.revoked = issued_at, revoked

    def is_token_valid(self, access_token: AccessToken) -> bool:
        self._reload_revocations()
        if bytes(access_token.public_key) in self.revoked:
            logger.debug("refused a revoked swarm token")
            return False
        key = access_token.SerializeToString()
        now = time.time()
        expires = self._verified.get(key)
        if expires is not None:
            return expires > now
        try:
            info = check_access_token(access_token, self._coordinator_key, job_id=self.job_id, now=now)
        except AuthError as exc:
            logger.debug("refused a swarm token: %s", exc)
            return False
        if len(self._verified) > 4096:
            self._verified = {k: v for k, v in self._verified.items() if v > now}
        self._verified[key] = info.expires_at
        return True

    def does_token_need_refreshing(self, access_token: AccessToken) -> bool:
        left = float(access_token.expiration_time) - time.time()
        if self._refresh_margin_s is not None:
            return left < self._refresh_margin_s
        return left < min(120.0, self._issued_life / 3)
