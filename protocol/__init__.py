"""essaim.protocol: the contract between volunteers, researchers, admins and a coordinator.

It holds the gRPC service (``v1``, generated from ``proto/``), the job recipe schema (``recipe``),
the domain types (``types``) and the only converter between the two (``serde``). It imports
nothing else from essaim.
"""

from __future__ import annotations

from essaim.protocol.version import PROTOCOL_VERSION, __version__

__all__ = ["PROTOCOL_VERSION", "__version__"]
