"""essaim: volunteer computing for open language models.

The top-level package holds the ``essaim`` command line (``main``) and composes the command groups
of :mod:`essaim.coordinator` and :mod:`essaim.client`.
"""

from __future__ import annotations

from essaim.protocol.version import __version__

__all__ = ["__version__"]
