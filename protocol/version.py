"""Versions: the package's and the wire protocol's (bumped on any incompatible .proto change).

``__version__`` is the one place the package version is written: pyproject.toml reads it from
here (``[tool.setuptools.dynamic]``), and reading it costs the always-on app no import of
``importlib.metadata`` (about 4 MB).
"""

from __future__ import annotations

PROTOCOL_VERSION = 1
__version__ = "0.1.0"
