"""The real supervisor and a fake trainer on a machine whose readings are made up where the app reads
them (client/observe.py: psutil's machine-wide figures and NVML): heat, low memory, other programs'
CPU and GPU use and the battery each pause the trainer with their reason, and it trains again once
the reading is back to normal. Also what ``essaim status`` says where no temperature is read."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from client_harness import FakeIdle, training, wait_status
from essaim.client.cli import format_status
from essaim.client.observe import Observer
from essaim.client.supervisor import Supervisor

pytestmark = pytest.mark.timeout(120)
MB = 1024 * 1024


@pytest.fixture
def machine(client_kit: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A cool machine with a CPU sensor, an NVIDIA GPU, memory to spare and nothing else running."""
    machine = client_kit.FakeMachine()
    machine.cpu_temp_c, machine.gpu_temp_c = 50.0, 45.0
    machine.install(monkeypatch, gpu=True)
    return machine


@pytest.fixture
def start(tmp_path: Any, client_kit: Any, machine: Any) -> Iterator[Callable[..., Supervisor]]:
    """Starts the supervisor (after ``machine`` is in place) on a local job with the fake trainer."""
    running = contextlib.ExitStack()

    def start(**policy: Any) -> Supervisor:
        paths = client_kit.app_paths(tmp_path)
        flags = {
            **client_kit.local_job_flags(tmp_path),
            "policy.idle_minutes": 1.0,
            "policy.other_cpu_pause_percent": 50,
            "policy.min_free_ram_mb": 1024,
            "policy.cpu_temp_high_c": 85.0,
            "policy.cpu_temp_low_c": 75.0,
            "policy.gpu_temp_high_c": 83.0,
            "policy.gpu_temp_low_c": 73.0,
            "policy.resume_delay_seconds": 1.0,
            **{f"policy.{key}": value for key, value in policy.items()},
        }
        sup = Supervisor(
            paths=paths,
            flags=flags,
            env={},
            idle_source=FakeIdle(),  # the user is away: only the sensor rules can stop training
            observer=Observer(sensor_interval=0.1),  # slow sensors read every tick, not every 5 s
        )
        return running.enter_context(client_kit.supervisor_running(sup))

    with running:
        yield start


def wait(
    sup: Supervisor, predicate: Callable[[dict[str, Any]], bool], what: str, timeout: float = 20.0
) -> dict:
    return wait_status(sup, predicate, what, timeout)


def paused_for(reason: str, *, trainer: tuple[str, ...] = ("paused",)) -> Callable[[dict[str, Any]], bool]:
    return lambda st: st["reason"] == reason and st["trainer"]["state"] in trainer


def test_a_hot_cpu_pauses_the_trainer_until_it_has_cooled_below_the_low_mark(
    machine: Any, start: Any
) -> None:
    sup = start()
    pid = wait(sup, training, "training")["trainer_pid"]
    machine.cpu_temp_c = 90.0
    st = wait(sup, paused_for("paused: CPU too hot (90°C; resumes below 75°C)"), "the heat pause")
    assert st["trainer_pid"] == pid
    machine.cpu_temp_c = 80.0  # under the high mark, above the low one: still too hot
    wait(sup, paused_for("paused: CPU too hot (80°C; resumes below 75°C)"), "the pause to hold at 80°C")
    machine.cpu_temp_c = 70.0
    assert wait(sup, training, "training after cooling down")["trainer_pid"] == pid


def test_a_hot_gpu_pauses_the_trainer_until_it_has_cooled(machine: Any, start: Any) -> None:
    sup = start()
    pid = wait(sup, training, "training")["trainer_pid"]
    machine.gpu_temp_c = 90.0
    st = wait(sup, paused_for("paused: GPU too hot (90°C; resumes below 73°C)"), "the GPU heat pause")
    assert st["trainer_pid"] == pid
    machine.gpu_temp_c = 60.0
    assert wait(sup, training, "training after the GPU cooled down")["trainer_pid"] == pid


def test_low_memory_stops_the_trainer_and_a_new_one_starts_when_memory_is_back(
    machine: Any, start: Any
) -> None:
    sup = start()
    pid = wait(sup, training, "training")["trainer_pid"]
    machine.available_ram_bytes = 200 * MB
    st = wait(
        sup,
        lambda s: (
            s["reason"] == "paused: low memory (0.2 GB free, minimum 1.0 GB)" and s["trainer_pid"] is None
        ),
        "the trainer to stop and give its memory back",
    )
    assert st["action"] == "stop"
    machine.available_ram_bytes = 8 * 1024 * MB
    st = wait(sup, training, "training with memory to spare again")
    assert st["trainer_pid"] != pid


def test_other_programs_cpu_use_pauses_the_trainer_while_it_lasts(machine: Any, start: Any) -> None:
    sup = start()
    pid = wait(sup, training, "training")["trainer_pid"]
    machine.others_busy = True
    st = wait(
        sup, paused_for("waiting: other programs use 100% CPU (limit 50%)"), "the pause for others' CPU use"
    )
    assert st["trainer_pid"] == pid
    machine.others_busy = False
    assert wait(sup, training, "training once the others are done")["trainer_pid"] == pid


def test_another_program_on_the_gpu_pauses_the_trainer_while_it_computes(machine: Any, start: Any) -> None:
    sup = start()
    pid = wait(sup, training, "training")["trainer_pid"]
    machine.other_gpu_pids = [4_000_000]  # no such local process: a compute process in another container
    wait(
        sup,
        paused_for("waiting: 1 other program(s) computing on the GPU"),
        "the pause for the other GPU user",
    )
    machine.other_gpu_pids = []
    assert wait(sup, training, "training once the GPU is free")["trainer_pid"] == pid


def test_an_unknown_power_state_is_not_battery_and_unplugging_pauses(machine: Any, start: Any) -> None:
    machine.battery = (None, None)  # psutil's answer where it cannot tell, without a charge either
    sup = start()
    pid = wait(sup, training, "training with an unknown power state")["trainer_pid"]
    machine.battery = (False, 80.0)
    wait(sup, paused_for("paused: on battery"), "the battery pause")
    machine.battery = (True, 80.0)
    assert wait(sup, training, "training on mains power")["trainer_pid"] == pid


def test_on_battery_below_the_minimum_charge_pauses_and_an_unknown_charge_does_not(
    machine: Any, start: Any
) -> None:
    machine.battery = (False, 30.0)
    sup = start(train_on_battery=True, battery_min_percent=50)
    wait(sup, paused_for("paused: battery at 30% (minimum 50%)", trainer=("none",)), "the low battery pause")
    machine.battery = (False, None)
    wait(sup, training, "training on battery with no charge reading")
    machine.battery = (False, 20.0)
    wait(sup, paused_for("paused: battery at 20% (minimum 50%)"), "the low battery pause again")


def test_status_says_the_temperature_rule_is_inactive_where_no_sensor_is_read(
    machine: Any, start: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine.cpu_temp_c = None
    machine.install(monkeypatch, gpu=False)  # no NVML: no GPU temperature either
    st = wait(start(), training, "training")
    temperature = st["temperature"]
    assert (temperature["cpu_c"], temperature["gpu_c"]) == (None, None)
    assert (temperature["cpu_rule"], temperature["gpu_rule"]) == ("no sensor", "no sensor")
    assert temperature["note"].startswith("temperature rule inactive: no temperature sensor is read here")
    assert json.loads(json.dumps(st, default=str))["temperature"] == temperature  # as `essaim status --json`
    human = format_status(st).splitlines()
    assert temperature["note"] in human


def test_status_shows_the_temperatures_the_rule_watches(machine: Any, start: Any) -> None:
    st = wait(start(), training, "training")
    assert st["temperature"] == {"cpu_c": 50.0, "gpu_c": 45.0, "cpu_rule": "on", "gpu_rule": "on", "note": ""}
    assert "temperature: CPU 50°C, GPU 45°C" in format_status(st).splitlines()
