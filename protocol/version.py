"""Versions: the package's and the wire protocol's (bumped on any incompatible .proto change)."""

from __future__ import annotations

from importlib import metadata

PROTOCOL_VERSION = 1

try:
    __version__ = metadata.version("essaim")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
