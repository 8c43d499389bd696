"""The errors of essaim.swarm: what can go wrong while one peer trains one job.

    EssaimError (essaim.protocol.errors)
    └── SwarmError                base of every swarm error
        ├── HardwareError         the device or dtype a recipe or flag asks for is not available here
        ├── ModelError            the base model, its tokenizer or its adapter cannot be built
        ├── DataError             the dataset or eval set cannot be read, tokenized or packed
        ├── IntegrityError        a file's sha256 does not match the one the job announced
        ├── StateError            a saved training state does not fit the model it is loaded into
        ├── EvalError             the eval set cannot be evaluated with the recipe's metric
        ├── ArtifactError         the final artifact cannot be written
        ├── AuthError             a swarm token is missing, forged, expired or revoked
        ├── DHTError              the DHT cannot start or reach the job's initial peers
        └── TrainingError         the training loop or the optimizer of the swarm failed

Messages say what is wrong and how to fix it. The trainer and the coordinator's swarm services
catch ``SwarmError`` to report a job's failure with a readable reason; lower-level errors
(transformers, datasets, safetensors, hivemind) are translated into these at the boundary.
"""

from __future__ import annotations

from essaim.protocol.errors import EssaimError


class SwarmError(EssaimError):
    """Base of every error raised by essaim.swarm."""


class HardwareError(SwarmError):
    """The device or dtype asked for is not available on this machine."""


class ModelError(SwarmError):
    """The base model, its tokenizer or its adapter cannot be built from the recipe."""


class DataError(SwarmError):
    """The training data or the eval set cannot be read, tokenized or packed."""


class IntegrityError(SwarmError):
    """A file's content does not match the sha256 the job announced for it."""


class StateError(SwarmError):
    """A saved training state does not fit the model it is loaded into."""


class EvalError(SwarmError):
    """The eval set cannot be evaluated with the recipe's metric."""


class ArtifactError(SwarmError):
    """The artifact (adapter or model, model card, provenance) cannot be written."""


class AuthError(SwarmError):
    """A swarm token is missing, badly signed, expired or revoked."""


class DHTError(SwarmError):
    """The DHT cannot start, or cannot reach the job's initial peers."""


class TrainingError(SwarmError):
    """The training loop or the swarm's optimizer failed."""


__all__ = [
    "ArtifactError",
    "AuthError",
    "DHTError",
    "DataError",
    "EvalError",
    "HardwareError",
    "IntegrityError",
    "ModelError",
    "StateError",
    "SwarmError",
    "TrainingError",
]
