"""The JSON lines between the volunteer app and the trainer: both ends parse what the other writes."""

from __future__ import annotations

import base64
import json

import pytest
from essaim.client.trainer_protocol import (
    EpochEvent,
    PauseCommand,
    ProtocolError,
    StoppedEvent,
    ThrottleCommand,
    TrainerAssignment,
    assignment_for_trainer,
    encode,
    parse_command,
    parse_event,
)
from essaim.protocol.types import Assignment, Job, JobFile, JobStatus


def test_commands_round_trip_and_ignore_unknown_fields() -> None:
    assert isinstance(parse_command(encode(PauseCommand())), PauseCommand)
    throttle = parse_command('{"cmd": "throttle", "threads": 2, "duty_cycle": 0.25, "future": true}')
    assert isinstance(throttle, ThrottleCommand) and (throttle.threads, throttle.duty_cycle) == (2, 0.25)
    assert parse_command(b'{"cmd":"token","token":"essaim-swarm-v1.x"}').token == "essaim-swarm-v1.x"


@pytest.mark.parametrize("line", ['{"cmd": "dance"}', "not json", '{"cmd": "throttle", "duty_cycle": 1.5}',
                                  '{"cmd": "throttle", "threads": 0}', "{}"])
def test_bad_commands_are_protocol_errors(line: str) -> None:
    with pytest.raises(ProtocolError):
        parse_command(line)


def test_events_round_trip() -> None:
    line = encode(EpochEvent(epoch=3, samples=480, loss=1.5, samples_per_second=20.0, compute_seconds=24.0, peers=2))
    assert line.endswith("\n") and "\n" not in line[:-1]
    event = parse_event(line)
    assert isinstance(event, EpochEvent) and event.epoch == 3 and event.peers == 2
    newer = json.loads(encode(StoppedEvent(reason="completed")))
    newer["shiny_new_field"] = [1, 2]
    assert parse_event(json.dumps(newer)).reason == "completed"
    with pytest.raises(ProtocolError):
        parse_event('{"event": "exploded"}')


def test_assignment_from_the_coordinators() -> None:
    job = Job(id="job-1", name="demo", status=JobStatus.RUNNING, recipe_yaml="name: demo\n",
              files=[JobFile(path="data/train.txt", sha256="ab" * 32, size=10)])
    assignment = Assignment(job=job, initial_peers=["/ip4/1.2.3.4/tcp/5/p2p/QmX"], swarm_token="essaim-swarm-v1.t",
                            shard_ids=[1, 3], coordinator_public_key=b"\x30\x82der")
    trainer = assignment_for_trainer(assignment, volunteer_id="v-1", identity_key_path="/keys/id.pem", threads=2)
    again = TrainerAssignment.model_validate_json(trainer.model_dump_json())
    assert again.job_id == "job-1" and again.shard_ids == [1, 3] and again.threads == 2
    assert again.job_files[0].path == "data/train.txt" and again.coordinator_key_bytes() == b"\x30\x82der"
    assert again.host_maddrs == ["/ip4/0.0.0.0/tcp/0"] and again.client_mode == "auto"
    pem = TrainerAssignment.model_validate({**again.model_dump(), "coordinator_public_key": "ssh-rsa AAAA"})
    assert pem.coordinator_key_bytes() == b"ssh-rsa AAAA"
    assert base64.b64decode(again.coordinator_public_key) == b"\x30\x82der"
    with pytest.raises(ValueError):
        assignment_for_trainer(Assignment(job=None), volunteer_id="v", identity_key_path="k")
