"""``python -m essaim``: the same as the ``essaim`` command."""

from __future__ import annotations

from essaim.main import main

if __name__ == "__main__":
    main()
