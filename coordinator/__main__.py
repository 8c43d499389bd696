"""``python -m essaim.coordinator``: the coordinator's commands without the root ``essaim`` CLI."""

from __future__ import annotations

import sys

from essaim.coordinator.cli import main

if __name__ == "__main__":
    sys.exit(main())
