"""The calls a volunteer's app makes, shared by both coordinator clients.

:class:`~essaim.protocol.client.CoordinatorClient` (grpcio) and
:class:`~essaim.protocol.lite_client.LiteClient` (h2, for the always-on app) send them the same way;
each provides ``_volunteer_call(method, request, reply_type)``, which sends one unary request and
returns the reply message. Nothing here imports grpcio.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from essaim.protocol import serde
from essaim.protocol.auth_metadata import registration_message
from essaim.protocol.types import (
    Assignment,
    Hardware,
    HeartbeatReply,
    HeartbeatReport,
    JobProgress,
    Registration,
    RegistrationRequest,
    Volunteer,
)
from essaim.protocol.v1 import coordinator_pb2 as pb


class VolunteerCalls:
    """RegistrationChallenge, Register, Heartbeat and GetAssignment, as domain types in and out
    (see the module doc)."""

    def _volunteer_call(self, method: str, request: Any, reply_type: type) -> Any:
        raise NotImplementedError

    def register(
        self,
        *,
        public_key: bytes,
        peer_id: str,
        name: str,
        hardware: Hardware,
        team: str = "",
        timestamp: float,
        signature: bytes,
        nonce: bytes = b"",
    ) -> Registration:
        """Join the coordinator with a signature over ``registration_message(peer_id, name,
        timestamp, nonce)``, ``nonce`` from :meth:`registration_challenge`; the returned token
        authenticates this volunteer's later calls. :meth:`register_with_key` does it all."""
        request = serde.registration_request_to_proto(
            RegistrationRequest(
                public_key=public_key,
                peer_id=peer_id,
                name=name,
                timestamp=timestamp,
                signature=signature,
                hardware=hardware,
                team=team,
                nonce=nonce,
            )
        )
        return serde.registration_from_proto(self._volunteer_call("Register", request, pb.RegisterResponse))

    def registration_challenge(self) -> bytes:
        """A fresh nonce from the coordinator, to sign into a registration (valid a few minutes, once)."""
        reply = self._volunteer_call("RegistrationChallenge", pb.RegistrationChallengeRequest(
            header=serde.request_header()), pb.RegistrationChallengeResponse)
        return bytes(reply.nonce)

    def register_with_key(
        self,
        *,
        sign: Callable[[bytes], bytes],
        public_key: bytes,
        peer_id: str,
        name: str,
        hardware: Hardware,
        team: str = "",
    ) -> Registration:
        """Ask for a challenge, sign the registration with ``sign`` (the identity key's) and register."""
        nonce = self.registration_challenge()
        timestamp = time.time()
        return self.register(public_key=public_key, peer_id=peer_id, name=name, hardware=hardware, team=team,
                             timestamp=timestamp, nonce=nonce,
                             signature=sign(registration_message(peer_id, name, timestamp, nonce)))

    def heartbeat(
        self,
        *,
        volunteer_id: str,
        state: str,
        reason: str = "",
        hardware: Hardware | None = None,
        progress: Sequence[JobProgress] = (),
        client_version: str = "",
        profile: tuple[str, str] | None = None,
    ) -> HeartbeatReply:
        """``profile``: (pseudonym, team), when the volunteer changed either since it last sent them."""
        report = HeartbeatReport(
            volunteer_id=volunteer_id,
            state=state,
            reason=reason,
            hardware=hardware,
            progress=list(progress),
            client_version=client_version,
            name=profile[0] if profile is not None else None,
            team=profile[1] if profile is not None else "",
        )
        reply = self._volunteer_call(
            "Heartbeat", serde.heartbeat_report_to_proto(report), pb.HeartbeatResponse
        )
        return serde.heartbeat_reply_from_proto(reply)

    def get_assignment(self, volunteer_id: str, hardware: Hardware) -> Assignment:
        request = serde.assignment_request_to_proto(volunteer_id, hardware)
        return serde.assignment_from_proto(self._volunteer_call("GetAssignment", request, pb.Assignment))

    def erase_account(self, volunteer_id: str) -> Volunteer:
        """Erase this volunteer's account: its tokens stop, what it told about itself (pseudonym,
        team, hardware, state) is forgotten; its id and ledger rows remain."""
        request = pb.EraseVolunteerRequest(header=serde.request_header(), volunteer_id=volunteer_id)
        return serde.volunteer_from_proto(self._volunteer_call("EraseVolunteer", request, pb.Volunteer))
