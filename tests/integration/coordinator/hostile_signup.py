"""A stranger abusing a coordinator's open sign-up, as a process of its own.

    python hostile_signup.py replay ADDRESS REQUEST_FILE N   # send a captured Register request N times
    python hostile_signup.py flood ADDRESS N                  # register N fresh identities at once
    python hostile_signup.py challenges ADDRESS N             # ask for N registration challenges at once

Prints one JSON object: how many calls were answered with a token, the status codes of the
others, and the first refusal's message (``refusal``). The replay sends the captured bytes as they are (the attacker cannot sign anew: it has
no key); the flood asks for a challenge and signs each registration properly with a key of its
own, as a bot would.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from essaim.client import keys
from essaim.protocol import serde
from essaim.protocol.auth_metadata import registration_message
from essaim.protocol.types import Hardware, RegistrationRequest
from essaim.protocol.v1 import coordinator_pb2 as pb

METHOD = "/essaim.v1.Coordinator/Register"
CHALLENGE = "/essaim.v1.Coordinator/RegistrationChallenge"


def _call(channel: grpc.Channel, data: bytes, outcomes: dict[str, Any]) -> None:
    register = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=pb.RegisterResponse.FromString)
    try:
        reply = register(data, timeout=10)
        key = "token" if reply.token else "no token"
    except grpc.RpcError as exc:
        key = exc.code().name
        outcomes.setdefault("refusal", exc.details())
    outcomes[key] = outcomes.get(key, 0) + 1


def _challenge(channel: grpc.Channel) -> bytes:
    ask = channel.unary_unary(CHALLENGE, request_serializer=None,
                              response_deserializer=pb.RegistrationChallengeResponse.FromString)
    return bytes(ask(pb.RegistrationChallengeRequest(header=serde.request_header()).SerializeToString(),
                     timeout=10).nonce)


def _fresh(channel: grpc.Channel, i: int) -> bytes:
    key = keys.new_private_key()
    peer, name, ts = f"QmBot{i}", f"bot{i}", time.time()
    nonce = _challenge(channel)
    request = serde.registration_request_to_proto(RegistrationRequest(
        public_key=keys.public_key_der(key), peer_id=peer, name=name, timestamp=ts, nonce=nonce,
        signature=keys.sign(key, registration_message(peer, name, ts, nonce)), hardware=Hardware()))
    return request.SerializeToString()


def main(argv: list[str]) -> int:
    mode, address = argv[0], argv[1].removeprefix("http://")
    outcomes: dict[str, Any] = {}
    with grpc.insecure_channel(address) as channel:
        if mode == "replay":
            data = Path(argv[2]).read_bytes()
            for _ in range(int(argv[3])):
                _call(channel, data, outcomes)
        elif mode == "flood":
            for i in range(int(argv[2])):
                try:
                    data = _fresh(channel, i)
                except grpc.RpcError as exc:  # its challenges are cut too
                    outcomes[exc.code().name] = outcomes.get(exc.code().name, 0) + 1
                    continue
                _call(channel, data, outcomes)
        elif mode == "challenges":
            for _ in range(int(argv[2])):
                try:
                    key = "challenge" if _challenge(channel) else "empty"
                except grpc.RpcError as exc:
                    key = exc.code().name
                    outcomes.setdefault("refusal", exc.details())
                outcomes[key] = outcomes.get(key, 0) + 1
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    print(json.dumps(dict(outcomes)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
