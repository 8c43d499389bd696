"""Signed progress records in a job's DHT: each peer publishes what it has done, the coordinator's
monitor reads them (even after being down for a while) into the store and the contributions ledger.

    dht = start_dht(..., record_validators=progress_validators(job_id))
    publish_progress(dht, job_id, ProgressRecord(epoch=3, samples=960, ...), owner_key=key)
    read_progress(dht, job_id)      # {peer id: ProgressRecord}, only records their owner signed

Records live under the key ``f"{job_id}_volunteer_progress"`` (hivemind.Optimizer already uses
``f"{run_id}_progress"`` for its own tracker), one subkey per peer: ``[owner:<its RSA public key>]``.
hivemind's RSASignatureValidator makes only the key's holder able to write its subkey, and the
SchemaValidator below makes every DHT peer refuse values of the wrong shape. The schema allows
fields it does not know, so peers of newer versions can add fields; readers ignore them.
``samples`` and ``compute_seconds`` are totals since the volunteer started the job.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import time
from typing import Optional

import hivemind
import pydantic.v1 as pydantic_v1
from essaim.swarm.errors import DHTError
from essaim.swarm.identity import RSAPrivateKey, RSAPublicKey, openssh_public_key, peer_id_for_public_key
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.schema import BytesWithPublicKey, SchemaValidator
from hivemind.dht.validation import RecordValidatorBase
from hivemind.utils import get_dht_time
from pydantic import BaseModel, ConfigDict, Field, ValidationError

logger = logging.getLogger(__name__)

FIELD = "volunteer_progress"
DEFAULT_EXPIRATION_S = 60.0
_OWNER_RE = re.compile(rb"\[owner:(.+?)\]")


def progress_key(job_id: str) -> str:
    return f"{job_id}_{FIELD}"


class ProgressRecord(BaseModel):
    """One peer's progress on one job, as published in the DHT (unknown fields are ignored)."""

    model_config = ConfigDict(extra="ignore")

    epoch: int = Field(ge=0)
    loss: float | None = None
    samples: int = Field(default=0, ge=0)
    samples_per_second: float = Field(default=0.0, ge=0)
    compute_seconds: float = Field(default=0.0, ge=0)
    volunteer_id: str = ""
    updated_at: float = Field(default_factory=time.time)

    def to_dht_value(self) -> dict[str, object]:
        """The value stored in the DHT: strictly typed (ints as int, finite floats) for the schema."""
        loss = self.loss if self.loss is not None and math.isfinite(self.loss) else None
        return {
            "epoch": int(self.epoch),
            "loss": None if loss is None else float(loss),
            "samples": int(self.samples),
            "samples_per_second": float(self.samples_per_second) if math.isfinite(self.samples_per_second) else 0.0,
            "compute_seconds": float(self.compute_seconds),
            "volunteer_id": str(self.volunteer_id),
            "updated_at": float(self.updated_at),
        }


class _RecordSchema(pydantic_v1.BaseModel):
    """The DHT-side schema (hivemind validators speak pydantic v1 and need strict types)."""

    epoch: pydantic_v1.conint(ge=0, strict=True)  # type: ignore[valid-type]
    loss: Optional[pydantic_v1.StrictFloat]  # noqa: UP045 - pydantic v1 wants typing.Optional
    samples: pydantic_v1.conint(ge=0, strict=True)  # type: ignore[valid-type]
    samples_per_second: pydantic_v1.confloat(ge=0.0, strict=True)  # type: ignore[valid-type]
    compute_seconds: pydantic_v1.confloat(ge=0.0, strict=True)  # type: ignore[valid-type]
    volunteer_id: pydantic_v1.constr(max_length=256, strict=True)  # type: ignore[valid-type]
    updated_at: pydantic_v1.StrictFloat

    class Config:
        extra = pydantic_v1.Extra.allow  # newer peers may add fields


class _ProgressSchema(pydantic_v1.BaseModel):
    volunteer_progress: dict[BytesWithPublicKey, Optional[_RecordSchema]]  # type: ignore[valid-type]  # noqa: UP045


def progress_validators(job_id: str) -> list[RecordValidatorBase]:
    """Validators every peer of the job's DHT should run (start_dht adds the signature validator)."""
    return [SchemaValidator(_ProgressSchema, allow_extra_keys=True, prefix=job_id)]


def owner_subkey(key: RSAPrivateKey | RSAPublicKey | bytes) -> bytes:
    """The subkey a peer publishes under: ``[owner:<OpenSSH public key>]``."""
    return RSASignatureValidator.PUBLIC_KEY_FORMAT.replace(b"_key_", openssh_public_key(key))


def owner_public_key(subkey: bytes) -> bytes | None:
    """The OpenSSH public key inside an owner subkey, or None."""
    match = _OWNER_RE.search(subkey) if isinstance(subkey, bytes) else None
    return match.group(1) if match else None


@functools.lru_cache(maxsize=4096)
def owner_peer_id(subkey: bytes) -> str | None:
    """The peer id of the key inside an owner subkey (the key that signed what is stored under it),
    or None when it holds none. Cached: peers read the same subkeys every second."""
    public = owner_public_key(subkey)
    if public is None:
        return None
    try:
        return peer_id_for_public_key(public)
    except Exception:  # not a key: nothing stored under it counts
        return None


def publish_progress(
    dht: hivemind.DHT,
    job_id: str,
    record: ProgressRecord,
    *,
    owner_key: RSAPrivateKey | None = None,
    expiration: float = DEFAULT_EXPIRATION_S,
    timeout: float = 10.0,
    wait: bool = True,
) -> bool:
    """Store ``record`` under this peer's subkey for ``expiration`` seconds; True when stored.

    ``owner_key`` must be the key the DHT was started with (``start_dht`` remembers it on the DHT,
    so it can be left out). Raises DHTError when the DHT does not answer within ``timeout``.
    ``wait=False`` sends the record in the background and returns True at once.
    """
    key = owner_key if owner_key is not None else getattr(dht, "essaim_private_key", None)
    if key is None:
        raise ValueError("publish_progress needs owner_key (the private key the DHT signs records with)")
    try:
        future = dht.store(
            progress_key(job_id),
            subkey=owner_subkey(key),
            value=record.to_dht_value(),
            expiration_time=get_dht_time() + expiration,
            return_future=True,
        )
        return bool(future.result(timeout)) if wait else True
    except Exception as exc:
        raise DHTError(f"could not publish progress to the DHT: {exc or type(exc).__name__}") from None


def read_progress(dht: hivemind.DHT, job_id: str, *, timeout: float = 10.0) -> dict[str, ProgressRecord]:
    """Every live, validly signed progress record of the job, by the publisher's peer id.

    Raises DHTError when the DHT does not answer within ``timeout``.
    """
    try:
        found = dht.get(progress_key(job_id), latest=True, return_future=True).result(timeout)
    except Exception as exc:
        raise DHTError(f"could not read progress from the DHT: {exc or type(exc).__name__}") from None
    if found is None or not isinstance(found.value, dict):
        return {}
    records: dict[str, ProgressRecord] = {}
    for subkey, item in found.value.items():
        owner = owner_peer_id(subkey) if isinstance(subkey, bytes) else None
        value = getattr(item, "value", None)
        if owner is None or not isinstance(value, dict):
            continue
        try:
            records[owner] = ProgressRecord.model_validate(value)
        except (ValidationError, ValueError) as exc:
            logger.debug("skipping a malformed progress record: %s", exc)
    return records
