"""The tray icon's pictures, one per state, drawn with Pillow.

    image = icon_image("training")             # a PIL image, 64x64 RGBA
    python -m essaim.client.icons DIR          # writes DIR/<state>.png (the packaged assets)

A hexagon (a honeycomb cell) in the state's colour: amber while training, blue while waiting for
the user to leave, grey when paused, red on error. Shapes differ too (a bar for paused, a cross for
error, a dot while waiting), so the states are told apart without colour. The tray loads the PNGs
in ``essaim/client/assets`` and draws them itself when they are missing.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

STATES = ("training", "waiting", "paused", "error")
COLOURS = {
    "training": (242, 169, 0, 255),
    "waiting": (52, 120, 200, 255),
    "paused": (128, 128, 128, 255),
    "error": (205, 40, 40, 255),
}
ASSETS = Path(__file__).with_name("assets")


def state_of(status_state: str) -> str:
    """The icon for a supervisor state ("finishing" shows as training, "starting" as waiting...)."""
    if status_state in STATES:
        return status_state
    return {"finishing": "training", "starting": "waiting", "stopped": "paused"}.get(status_state, "waiting")


def draw(state: str, size: int = 64) -> Any:
    from PIL import Image, ImageDraw

    image = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    pen = ImageDraw.Draw(image)
    c, r = size / 2, size * 0.47
    hexagon = [
        (c + r * math.cos(math.pi / 3 * k + math.pi / 6), c + r * math.sin(math.pi / 3 * k + math.pi / 6))
        for k in range(6)
    ]
    pen.polygon(hexagon, fill=COLOURS[state])
    white, w = (255, 255, 255, 255), size / 10
    if state == "training":
        pen.polygon([(c - 1.5 * w, c - 2.5 * w), (c - 1.5 * w, c + 2.5 * w), (c + 2.5 * w, c)], fill=white)
    elif state == "paused":
        pen.rectangle([c - 2 * w, c - 2.5 * w, c - 0.7 * w, c + 2.5 * w], fill=white)
        pen.rectangle([c + 0.7 * w, c - 2.5 * w, c + 2 * w, c + 2.5 * w], fill=white)
    elif state == "error":
        pen.line([c - 2 * w, c - 2 * w, c + 2 * w, c + 2 * w], fill=white, width=int(w * 1.2))
        pen.line([c - 2 * w, c + 2 * w, c + 2 * w, c - 2 * w], fill=white, width=int(w * 1.2))
    else:
        pen.ellipse([c - 1.5 * w, c - 1.5 * w, c + 1.5 * w, c + 1.5 * w], fill=white)
    return image


def icon_image(state: str) -> Any:
    """The PNG from the assets when it is there, else drawn now."""
    state = state_of(state)
    path = ASSETS / f"{state}.png"
    if path.exists():
        from PIL import Image

        with Image.open(path) as img:
            return img.convert("RGBA")
    return draw(state)


def write_assets(folder: Path = ASSETS) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for state in STATES:
        path = folder / f"{state}.png"
        draw(state).save(path, optimize=True)
        out.append(path)
    return out


if __name__ == "__main__":
    for written in write_assets(Path(sys.argv[1]) if len(sys.argv) > 1 else ASSETS):
        print(written)
