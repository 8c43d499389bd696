"""Progress records: the schema every DHT peer enforces, and the owner's signature on each record."""

from __future__ import annotations

import dataclasses
import math

import pytest
from essaim.swarm.identity import load_or_create_private_key, openssh_public_key, peer_id_for_key
from essaim.swarm.records import (
    ProgressRecord,
    owner_public_key,
    owner_subkey,
    progress_key,
    progress_validators,
)
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.protocol import DHTProtocol
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import CompositeValidator, DHTRecord
from hivemind.utils import get_dht_time

JOB = "job-7"
dumps = DHTProtocol.serializer.dumps


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, object]:
    root = tmp_path_factory.mktemp("keys")
    return load_or_create_private_key(root / "a.pem"), load_or_create_private_key(root / "b.pem")


def _validator(key: object) -> CompositeValidator:
    """What every peer of the job's DHT runs (start_dht adds the signature validator)."""
    return CompositeValidator([RSASignatureValidator(key), *progress_validators(JOB)])


def _record(owner: object, value: object, *, job: str = JOB) -> DHTRecord:
    return DHTRecord(
        key=DHTID.generate(source=progress_key(job)).to_bytes(),
        subkey=dumps(owner_subkey(owner)),
        value=dumps(value),
        expiration_time=get_dht_time() + 60,
    )


def _signed(key: object, record: DHTRecord) -> DHTRecord:
    return dataclasses.replace(record, value=_validator(key).sign_value(record))


def _good() -> dict[str, object]:
    return ProgressRecord(epoch=3, loss=1.25, samples=480, samples_per_second=12.5, compute_seconds=40.0,
                          volunteer_id="vol-a").to_dht_value()


def test_signed_record_is_accepted_by_other_peers(keys: tuple) -> None:
    a, b = keys
    record = _signed(a, _record(a, _good()))
    assert _validator(b).validate(record)


def test_record_under_someone_elses_subkey_is_refused(keys: tuple) -> None:
    a, b = keys
    forged = _signed(a, _record(b, _good()))  # a writes into b's slot: cannot sign for b
    assert not _validator(b).validate(forged)
    assert not _validator(a).validate(_record(a, _good()))  # unsigned


def test_tampered_value_is_refused(keys: tuple) -> None:
    a, b = keys
    record = _signed(a, _record(a, _good()))
    tampered = dataclasses.replace(record, value=record.value.replace(b"vol-a", b"vol-z"))
    assert not _validator(b).validate(tampered)


@pytest.mark.parametrize(
    "change",
    [{"epoch": 1.5}, {"epoch": -1}, {"samples": "many"}, {"loss": 1}, {"compute_seconds": -3.0},
     {"volunteer_id": 7}, {"updated_at": None}],
)
def test_values_of_the_wrong_shape_are_refused(keys: tuple, change: dict[str, object]) -> None:
    a, b = keys
    record = _signed(a, _record(a, {**_good(), **change}))
    assert not _validator(b).validate(record)


def test_unknown_fields_from_newer_peers_are_accepted(keys: tuple) -> None:
    a, b = keys
    record = _signed(a, _record(a, {**_good(), "gpu": "H100", "tokens": 123}))
    assert _validator(b).validate(record)
    parsed = ProgressRecord.model_validate({**_good(), "gpu": "H100"})
    assert parsed.epoch == 3 and not hasattr(parsed, "gpu")


def test_other_keys_are_left_alone(keys: tuple) -> None:
    _, b = keys
    other = DHTRecord(DHTID.generate(source="something_else").to_bytes(), dumps(None), dumps({"x": 1.5}),
                      get_dht_time() + 60)
    assert _validator(b).validate(other)


def test_dht_values_are_strictly_typed() -> None:
    value = ProgressRecord(epoch=2, loss=float("nan"), samples=5, samples_per_second=1,
                           compute_seconds=2, volunteer_id="v").to_dht_value()
    assert value["loss"] is None
    assert isinstance(value["samples_per_second"], float) and isinstance(value["compute_seconds"], float)
    assert isinstance(value["epoch"], int)
    assert ProgressRecord(epoch=0, loss=math.inf).to_dht_value()["loss"] is None


def test_owner_subkey_names_the_publisher(keys: tuple) -> None:
    a, _ = keys
    subkey = owner_subkey(a)
    assert owner_public_key(subkey) == openssh_public_key(a)
    assert subkey == RSASignatureValidator(a).local_public_key
    assert owner_public_key(b"plain") is None
    assert peer_id_for_key(a).startswith("Qm")
