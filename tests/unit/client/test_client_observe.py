"""The machine's readings as the supervisor gets them: the battery as psutil reports it, including
the power state it cannot tell."""

from __future__ import annotations

import sys
from collections import namedtuple

import psutil
import pytest
from essaim.client.observe import Observer

Battery = namedtuple("Battery", "percent secsleft power_plugged")  # psutil's sbattery


@pytest.fixture
def battery(monkeypatch: pytest.MonkeyPatch):
    """Sets what ``psutil.sensors_battery()`` answers; no NVML, so no GPU is read."""
    monkeypatch.setitem(sys.modules, "pynvml", None)

    def set_battery(value: Battery | None) -> None:
        monkeypatch.setattr(psutil, "sensors_battery", lambda: value, raising=False)

    return set_battery


@pytest.mark.parametrize(
    ("reading", "on_battery", "percent"),
    [
        (None, False, None),  # no battery
        (Battery(percent=40.0, secsleft=-1, power_plugged=False), True, 40.0),
        (Battery(percent=90.0, secsleft=-1, power_plugged=True), False, 90.0),
        (Battery(percent=55.0, secsleft=-1, power_plugged=None), False, 55.0),  # psutil cannot tell
        (Battery(percent=None, secsleft=-1, power_plugged=None), False, None),
        (Battery(percent=None, secsleft=-1, power_plugged=False), True, None),
    ],
)
def test_only_a_known_unplugged_state_is_on_battery(battery, reading, on_battery, percent) -> None:
    battery(reading)
    sample = Observer().sample()
    assert (sample.on_battery, sample.battery_percent) == (on_battery, percent)
