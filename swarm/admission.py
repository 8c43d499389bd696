"""Averaging and state downloads only with holders of the job's swarm token.

hivemind's authorizer guards DHT calls only. The averagers' own streams (asking to join a group,
sending parts to reduce, downloading the job's state) answered any peer that knew an address: a
stranger, or a volunteer banned from the job, could dial the coordinator's averaging peer and
download the model, or send it parts. Here every peer publishes its swarm token in the job's DHT
(:func:`publish_membership`, under ``<job>_members``, in a subkey only its own key can write:
hivemind's RSASignatureValidator), and an averager answers a stream (:class:`AdmittedServicer`)
only when the caller's peer id is that of a published token the coordinator signed for this job,
that has not expired and whose key is not on the job's revocation list (the checks of
:meth:`~essaim.swarm.auth.SwarmAuthorizer.is_token_valid`, which also reads the revocation list).

A caller is looked up once, then held until its token expires or is revoked; a caller that is not
admitted is looked up again after ``REFUSED_RECHECK_S`` (its record may not have reached the DHT
yet). The coordinator's averaging peers publish their tokens as volunteers do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import typing
from collections.abc import Callable
from typing import Any

from essaim.swarm.auth import SwarmAuthorizer, decode_swarm_token
from essaim.swarm.errors import AuthError
from essaim.swarm.identity import peer_id_for_public_key
from hivemind.p2p import P2PContext
from hivemind.proto import averaging_pb2

logger = logging.getLogger(__name__)

REFUSED_RECHECK_S = 2.0  # a caller not admitted is looked up in the DHT again after this long
PUBLISH_EVERY_S = 5.0  # how often a peer looks whether its token changed (and republishes it)
REPUBLISH_S = 60.0  # a peer republishes its unchanged token this often (DHT records can be lost)
LOOKUP_TIMEOUT_S = 5.0
REFUSED_READ_MESSAGES, REFUSED_READ_S = 64, 2.0  # what a refused caller's part stream is read of


def members_key(job_id: str) -> str:
    """The DHT key under which the job's peers publish their swarm tokens."""
    return f"{job_id}_members"


def publish_membership(dht: Any, job_id: str, token: str, *, owner_key: Any, expires_at: float,
                       timeout: float = 10.0) -> bool:
    """Store ``token`` in the job's DHT, in ``owner_key``'s own subkey, until the token expires."""
    from essaim.swarm.records import owner_subkey

    future = dht.store(members_key(job_id), subkey=owner_subkey(owner_key), value=token,
                       expiration_time=expires_at, return_future=True)
    return bool(future.result(timeout))


def keep_membership(dht: Any, job_id: str, token: str, owner_key: Any, stop: threading.Event,
                    *, current_token: Callable[[], str | None] | None = None) -> threading.Thread:
    """A daemon thread publishing this peer's swarm ``token`` now, again whenever it changes (the
    app or the coordinator refreshes it in the token file ``current_token`` reads) and every
    ``REPUBLISH_S`` seconds."""
    initial = token

    def loop() -> None:
        held, at = "", -REPUBLISH_S
        while True:
            token = (current_token() if current_token is not None else None) or initial
            if token != held or time.monotonic() - at >= REPUBLISH_S:
                try:
                    expires_at = float(decode_swarm_token(token).expiration_time)
                    if expires_at > time.time() and publish_membership(
                            dht, job_id, token, owner_key=owner_key, expires_at=expires_at):
                        held, at = token, time.monotonic()
                except Exception as exc:  # the DHT may be starting, shutting down or briefly unreachable
                    logger.debug("could not publish this peer's swarm token: %s", exc)
            if stop.wait(PUBLISH_EVERY_S if held else 0.5):
                return

    thread = threading.Thread(target=loop, name="essaim-membership", daemon=True)
    thread.start()
    return thread


class Admission:
    """Whether a remote peer id holds a valid, unrevoked swarm token of the job (see module doc).

    ``trusted``: peer ids admitted without a look-up (this peer's own). Used inside hivemind's
    averager processes (their event loop), with the averager's DHT handle."""

    def __init__(self, authorizer: SwarmAuthorizer, job_id: str, *, trusted: typing.Iterable[str] = ()) -> None:
        self.authorizer, self.job_id = authorizer, job_id
        self.trusted = frozenset(trusted)
        self._admitted: dict[str, Any] = {}  # peer id -> its AccessToken
        self._refused: dict[str, float] = {}  # peer id -> when to look it up again (monotonic)

    def _holds(self, peer_id: str) -> bool:
        token = self._admitted.get(peer_id)
        if token is None:
            return False
        if self.authorizer.is_token_valid(token):  # expiry and the revocation list, each time
            return True
        del self._admitted[peer_id]
        return False

    async def admits(self, dht: Any, peer_id: Any) -> bool:
        peer = str(peer_id)
        if peer in self.trusted or self._holds(peer):
            return True
        if self._refused.get(peer, -1.0) > time.monotonic():
            return False
        try:
            found = await dht.get(members_key(self.job_id), latest=True, return_future=True)
        except Exception as exc:
            logger.debug("could not look up the swarm's members: %s", exc)
            found = None
        self._learn(found)
        if self._holds(peer):
            return True
        if len(self._refused) > 4096:
            self._refused = {p: t for p, t in self._refused.items() if t > time.monotonic()}
        self._refused[peer] = time.monotonic() + REFUSED_RECHECK_S
        logger.info("refused an averaging stream from %s: it holds no valid swarm token of this job", peer)
        return False

    def _learn(self, found: Any) -> None:
        """Keep every published token that checks out and belongs to the key of its subkey."""
        from essaim.swarm.records import owner_peer_id

        if found is None or not isinstance(getattr(found, "value", None), dict):
            return
        for subkey, item in found.value.items():
            owner = owner_peer_id(subkey) if isinstance(subkey, bytes) else None
            value = getattr(item, "value", None)
            if owner is None or not isinstance(value, str):
                continue
            try:
                token = decode_swarm_token(value)
                if peer_id_for_public_key(bytes(token.public_key)) != owner:
                    continue  # a token of another key: it proves nothing about this subkey's owner
            except (AuthError, ValueError) as exc:
                logger.debug("skipping a malformed membership record: %s", exc)
                continue
            if self.authorizer.is_token_valid(token):
                self._admitted[owner] = token
                self._refused.pop(owner, None)


async def _drained(stream: typing.AsyncIterator[Any]) -> None:
    """Read what a refused caller sends (``REFUSED_READ_MESSAGES`` messages and ``REFUSED_READ_S``
    at most) before answering it. hivemind closes a stream when its handler returns; closed while
    the caller still writes, the stream is reset and the refusal written into it can be lost (the
    caller saw an empty answer, now and then, under load)."""
    async def read() -> None:
        count = 0
        async for _ in stream:
            count += 1
            if count >= REFUSED_READ_MESSAGES:
                return

    with contextlib.suppress(Exception):  # a timeout, a broken stream: answer anyway
        await asyncio.wait_for(read(), REFUSED_READ_S)


class AdmittedServicer:
    """A mixin for hivemind averagers: their streams answer admitted peers only (``admission``
    None: anyone, as hivemind does). Set ``admission`` before the averager's process starts."""

    admission: Admission | None = None
    dht: Any

    async def _admitted(self, context: P2PContext) -> bool:
        return self.admission is None or await self.admission.admits(self.dht, context.remote_id)

    async def rpc_join_group(  # annotated for hivemind's servicer, which reads the protobuf types from them
        self, request: averaging_pb2.JoinRequest, context: P2PContext,
    ) -> typing.AsyncIterator[averaging_pb2.MessageFromLeader]:
        if not await self._admitted(context):
            yield averaging_pb2.MessageFromLeader(code=averaging_pb2.PROTOCOL_VIOLATION)
            return
        async for response in super().rpc_join_group(request, context):  # type: ignore[misc]
            yield response

    async def _refused_parts(self, stream: typing.AsyncIterator[Any], context: P2PContext) -> bool:
        """True when the caller is not admitted: what it sent has been read (``_drained``), and the
        answer to write is PROTOCOL_VIOLATION."""
        if await self._admitted(context):
            return False
        await _drained(stream)
        return True

    async def rpc_aggregate_part(
        self, stream: typing.AsyncIterator[averaging_pb2.AveragingData], context: P2PContext,
    ) -> typing.AsyncIterator[averaging_pb2.AveragingData]:
        if await self._refused_parts(stream, context):
            yield averaging_pb2.AveragingData(code=averaging_pb2.PROTOCOL_VIOLATION)
            return
        async for message in super().rpc_aggregate_part(stream, context):  # type: ignore[misc]
            yield message

    async def rpc_download_state(
        self, request: averaging_pb2.DownloadRequest, context: P2PContext,
    ) -> typing.AsyncIterator[averaging_pb2.DownloadData]:
        if not await self._admitted(context):
            return  # nothing: hivemind's downloader moves on to the next peer
            yield  # an async generator, like hivemind's
        async for message in super().rpc_download_state(request, context):  # type: ignore[misc]
            yield message

