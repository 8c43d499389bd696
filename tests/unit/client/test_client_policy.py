"""The volunteer's rules: every rule, their precedence, hysteresis, schedule edges and snooze expiry."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from essaim.client.cli import format_status
from essaim.client.policy import (
    MB,
    Observations,
    PolicyConfig,
    PolicyState,
    decide,
    fmt_minutes,
    temperature_watch,
)
from essaim.client.schedule import Schedule
from essaim.client.settings import defaults

MONDAY_NOON = datetime(2024, 5, 6, 12, 0)  # a Monday
IDLE = Observations(user_idle_seconds=3600, available_ram_bytes=8 * 1024 * MB, cpu_count=8)
CFG = PolicyConfig()


def run(obs: Observations = IDLE, cfg: PolicyConfig = CFG, state: PolicyState | None = None, now=MONDAY_NOON):
    return decide(obs, cfg, state or PolicyState(), now)


def test_defaults_match_the_settings_table():
    assert PolicyConfig.from_settings(defaults()) == PolicyConfig()


def test_idle_machine_trains_at_full_intensity():
    d = run()
    assert (d.action, d.state, d.threads, d.duty_cycle) == ("train", "training", 8, 1.0)
    assert d.reason.startswith("training: machine idle")


def test_user_active_waits_with_idle_time_in_reason():
    d = run(replace(IDLE, user_idle_seconds=42))
    assert d.action == "pause"
    assert d.state == "waiting"
    assert d.reason == "waiting: user active (idle 0:42 of 3:00)"


def test_idle_threshold_edge():
    assert run(replace(IDLE, user_idle_seconds=179.9)).action == "pause"
    assert run(replace(IDLE, user_idle_seconds=180)).action == "train"


def test_while_in_use_mode_trains_lightly():
    cfg = replace(CFG, only_when_idle=False, in_use_threads=2, in_use_duty_cycle=0.3)
    d = run(replace(IDLE, user_idle_seconds=5), cfg)
    assert (d.action, d.threads, d.duty_cycle) == ("throttle", 2, 0.3)
    assert "training lightly" in d.reason


def test_in_use_mode_respects_cpu_caps():
    cfg = replace(
        CFG,
        only_when_idle=False,
        in_use_threads=4,
        in_use_duty_cycle=0.5,
        cpu_max_cores=1,
        cpu_max_percent=20,
    )
    d = run(replace(IDLE, user_idle_seconds=5), cfg)
    assert (d.threads, d.duty_cycle) == (1, 0.2)


@pytest.mark.parametrize(
    ("intensity", "threads", "duty"), [("light", 1, 0.25), ("medium", 4, 0.75), ("full", 8, 1.0)]
)
def test_intensity(intensity, threads, duty):
    d = run(cfg=replace(CFG, intensity=intensity))
    assert (d.threads, d.duty_cycle) == (threads, duty)


def test_cpu_caps_limit_full_intensity():
    d = run(cfg=replace(CFG, cpu_max_cores=3, cpu_max_percent=60))
    assert (d.action, d.threads, d.duty_cycle) == ("train", 3, 0.6)


def test_headless_counts_as_idle_or_not():
    headless = replace(IDLE, user_idle_seconds=None)
    assert run(headless).action == "train"
    d = run(headless, replace(CFG, headless_counts_as_idle=False))
    assert d.action == "pause"
    assert "no user session" in d.reason


def test_battery_default_pauses_and_ac_resumes():
    d = run(replace(IDLE, on_battery=True, battery_percent=90))
    assert (d.action, d.reason) == ("pause", "paused: on battery")
    assert run(replace(IDLE, on_battery=False, battery_percent=90)).action == "train"


def test_battery_allowed_above_threshold():
    cfg = replace(CFG, train_on_battery=True, battery_min_percent=50)
    assert run(replace(IDLE, on_battery=True, battery_percent=80), cfg).action == "train"
    d = run(replace(IDLE, on_battery=True, battery_percent=34), cfg)
    assert d.action == "pause"
    assert d.reason == "paused: battery at 34% (minimum 50%)"


def test_cpu_temperature_hysteresis():
    cfg = replace(CFG, cpu_temp_high_c=85, cpu_temp_low_c=75)
    state = PolicyState()
    steps = [(80, "train"), (86, "pause"), (84, "pause"), (76, "pause"), (74.9, "train"), (84, "train")]
    for temp, expected in steps:
        d = run(replace(IDLE, cpu_temp_c=temp), cfg, state)
        assert d.action == expected, (temp, d.reason)
        state = d.new_state
    hot = run(replace(IDLE, cpu_temp_c=90), cfg)
    assert hot.reason == "paused: CPU too hot (90°C; resumes below 75°C)"


def test_gpu_temperature_only_matters_when_the_gpu_is_used():
    obs = replace(IDLE, gpu_present=True, gpu_temp_c=90)
    assert run(obs).action == "pause"
    assert "GPU too hot" in run(obs).reason
    assert run(obs, replace(CFG, use_gpu=False)).action == "train"


def test_temperature_latch_updates_while_another_rule_wins():
    cfg = replace(CFG, cpu_temp_high_c=85, cpu_temp_low_c=75)
    d = run(replace(IDLE, on_battery=True, cpu_temp_c=90), cfg)
    assert d.reason == "paused: on battery"
    assert d.new_state.cpu_hot  # back on AC at 80°C: still paused for heat
    d2 = run(replace(IDLE, cpu_temp_c=80), cfg, d.new_state)
    assert "too hot" in d2.reason


def test_temperature_rule_off_and_unknown_sensor():
    assert run(replace(IDLE, cpu_temp_c=99), replace(CFG, cpu_temp_high_c=0)).action == "train"
    assert run(replace(IDLE, cpu_temp_c=None)).action == "train"


@pytest.mark.parametrize(
    ("obs", "cfg", "cpu", "gpu", "note"),
    [
        (
            IDLE,
            CFG,
            "no sensor",
            "no sensor",
            "temperature rule inactive: no temperature sensor is read here",
        ),
        (replace(IDLE, cpu_temp_c=60), CFG, "on", "no sensor", ""),  # no NVIDIA GPU: the CPU rule acts
        (replace(IDLE, cpu_temp_c=60, gpu_present=True, gpu_temp_c=50), CFG, "on", "on", ""),
        (
            replace(IDLE, gpu_present=True, gpu_temp_c=50),
            CFG,
            "no sensor",
            "on",
            "CPU temperature rule inactive",
        ),
        (
            IDLE,
            replace(CFG, cpu_temp_high_c=0),
            "off",
            "no sensor",
            "temperature rule inactive: no temperature sensor is read here",
        ),
        (
            IDLE,
            replace(CFG, cpu_temp_high_c=0, gpu_temp_high_c=0),
            "off",
            "off",
            "",
        ),  # the volunteer's choice
        (replace(IDLE, cpu_temp_c=60, gpu_temp_c=50), replace(CFG, use_gpu=False), "on", "off", ""),
    ],
)
def test_temperature_watch_says_when_no_sensor_is_read(obs, cfg, cpu, gpu, note):
    watch = temperature_watch(obs, cfg)
    assert (watch.cpu, watch.gpu) == (cpu, gpu)
    assert watch.note.startswith(note) and bool(watch.note) == bool(note)


def test_status_shows_the_inactive_temperature_rule_or_its_readings():
    base = {"state": "training", "reason": "training: machine idle", "contribution": {}}
    note = temperature_watch(IDLE, CFG).note
    off = {"cpu_c": None, "gpu_c": None, "cpu_rule": "no sensor", "gpu_rule": "no sensor", "note": note}
    assert format_status({**base, "temperature": off}).splitlines()[1] == note
    on = {"cpu_c": 61.4, "gpu_c": None, "cpu_rule": "on", "gpu_rule": "no sensor", "note": ""}
    assert "temperature: CPU 61°C" in format_status({**base, "temperature": on}).splitlines()
    assert "temperature" not in format_status(base)  # an app too old to say


def test_memory_floor_stops_and_holds():
    cfg = replace(CFG, min_free_ram_mb=1024, resume_delay_seconds=10)
    d = run(replace(IDLE, available_ram_bytes=512 * MB), cfg)
    assert d.action == "stop"
    assert d.reason.startswith("paused: low memory (0.5 GB free, minimum 1.0 GB)")
    later = run(IDLE, cfg, d.new_state, MONDAY_NOON + timedelta(seconds=5))
    assert later.action == "stop"
    assert "a moment ago" in later.reason
    assert run(IDLE, cfg, d.new_state, MONDAY_NOON + timedelta(seconds=11)).action == "train"


def test_other_cpu_use_pauses_then_holds_for_the_resume_delay():
    cfg = replace(CFG, other_cpu_pause_percent=50, resume_delay_seconds=10)
    d = run(replace(IDLE, other_cpu_percent=63), cfg)
    assert d.action == "pause"
    assert d.reason == "waiting: other programs use 63% CPU (limit 50%)"
    held = run(replace(IDLE, other_cpu_percent=5), cfg, d.new_state, MONDAY_NOON + timedelta(seconds=3))
    assert held.action == "pause"
    assert "were busy" in held.reason
    assert run(IDLE, cfg, d.new_state, MONDAY_NOON + timedelta(seconds=10)).action == "train"
    assert run(replace(IDLE, other_cpu_percent=99), replace(cfg, other_cpu_pause_percent=0)).action == "train"


def test_other_gpu_process_pauses_only_when_using_the_gpu():
    obs = replace(IDLE, gpu_present=True, other_gpu_processes=1)
    d = run(obs)
    assert (d.action, d.state) == ("pause", "waiting")
    assert "computing on the GPU" in d.reason
    assert run(obs, replace(CFG, pause_on_other_gpu=False)).action == "train"
    assert run(obs, replace(CFG, use_gpu=False)).use_gpu is False
    assert run(replace(IDLE, gpu_present=True)).use_gpu is True


def test_daily_network_limit():
    cfg = replace(CFG, daily_mb=100)
    assert run(replace(IDLE, network_today_bytes=99 * MB), cfg).action == "train"
    d = run(replace(IDLE, network_today_bytes=100 * MB), cfg)
    assert d.action == "stop"
    assert d.reason == "paused: daily network limit reached (100 of 100 MB; resets at midnight)"
    assert run(replace(IDLE, network_today_bytes=10**12)).action == "train"  # no limit set


def test_manual_pause_and_resume():
    d = run(state=PolicyState(manual="paused"))
    assert (d.action, d.state, d.reason) == ("pause", "paused", "paused by you (resume to train again)")
    assert run(state=replace(d.new_state, manual="")).action == "train"


def test_snooze_expires():
    until = MONDAY_NOON.timestamp() + 3600
    state = PolicyState(manual="paused", pause_until=until)
    d = run(state=state)
    assert d.action == "pause"
    assert d.reason == "paused by you until 13:00 (1:00:00 left)"
    d = run(state=state, now=MONDAY_NOON + timedelta(minutes=59, seconds=59))
    assert d.action == "pause"
    assert d.reason.endswith("(0:01 left)")
    d = run(state=state, now=MONDAY_NOON + timedelta(hours=1))
    assert d.action == "train"
    assert d.new_state.manual == ""
    assert d.new_state.pause_until is None


def test_finish_while_training_then_finished():
    d = run(replace(IDLE, trainer_running=True), state=PolicyState(manual="finish"))
    assert (d.action, d.state) == ("finish", "finishing")
    d = run(replace(IDLE, trainer_running=False), state=PolicyState(manual="finish"))
    assert d.action == "finish"
    assert d.reason.startswith("finished: not taking new work")


def test_schedule_outside_hours_stops_and_names_next_window():
    cfg = replace(CFG, schedule=Schedule.parse(mon="18:00-23:00"))
    d = run(cfg=cfg)
    assert (d.action, d.state) == ("stop", "waiting")
    assert d.reason == "waiting: outside the allowed hours (next: 18:00)"
    assert run(cfg=cfg, now=MONDAY_NOON.replace(hour=18)).action == "train"
    assert run(cfg=cfg, now=MONDAY_NOON.replace(hour=23)).action == "stop"


def test_schedule_next_window_on_another_day_or_never():
    cfg = replace(CFG, schedule=Schedule.parse(mon="none", tue="none", wed="09:00-10:00"))
    assert run(cfg=cfg).reason == "waiting: outside the allowed hours (next: Wed 09:00)"
    never = replace(
        CFG,
        schedule=Schedule.parse(**dict.fromkeys(("mon", "tue", "wed", "thu", "fri", "sat", "sun"), "none")),
    )
    assert "no hours allowed" in run(cfg=never).reason


@pytest.mark.parametrize(
    ("when", "allowed"),
    [
        (datetime(2024, 5, 10, 21, 59), False),  # Fri before the window
        (datetime(2024, 5, 10, 22, 0), True),  # Fri 22:00 start edge
        (datetime(2024, 5, 11, 3, 0), True),  # Sat 03:00: Friday's window crossing midnight
        (datetime(2024, 5, 11, 5, 59), True),
        (datetime(2024, 5, 11, 6, 0), False),  # end edge is exclusive
        (datetime(2024, 5, 11, 23, 0), False),  # Saturday has no window of its own
        (datetime(2024, 5, 6, 3, 0), True),  # Mon 03:00: Sunday's window crossing into the new week
        (datetime(2024, 5, 7, 3, 0), False),  # Tue 03:00: Monday has no window
    ],
)
def test_schedule_across_midnight_and_weekdays(when, allowed):
    schedule = Schedule.parse(
        mon="none", tue="none", wed="none", thu="none", fri="22:00-06:00", sat="none", sun="22:00-06:00"
    )
    assert schedule.allows(when) is allowed
    assert (run(cfg=replace(CFG, schedule=schedule), now=when).action == "train") is allowed


def test_schedule_full_day_and_24_00():
    schedule = Schedule.parse(mon="00:00-24:00", tue="none")
    assert schedule.allows(datetime(2024, 5, 6, 23, 59, 59))
    assert not schedule.allows(datetime(2024, 5, 7, 0, 0))


def test_precedence_of_rules():
    """finish > manual pause > battery > schedule > network > memory > heat > GPU > CPU > user."""
    everything = replace(
        IDLE,
        user_idle_seconds=1,
        on_battery=True,
        cpu_temp_c=99,
        other_cpu_percent=99,
        gpu_present=True,
        other_gpu_processes=2,
        available_ram_bytes=1,
        network_today_bytes=10**12,
    )
    cfg = replace(CFG, daily_mb=1, schedule=Schedule.parse(mon="none"))
    order = [
        (PolicyState(manual="finish"), "finished"),
        (PolicyState(manual="paused"), "paused by you"),
    ]
    for state, prefix in order:
        assert run(everything, cfg, state).reason.startswith(prefix)
    obs = everything
    chain = [
        ({"on_battery": False}, {}, "waiting: outside the allowed hours"),
        ({}, {"schedule": Schedule()}, "paused: daily network limit"),
        ({"network_today_bytes": 0}, {}, "paused: low memory"),
        ({"available_ram_bytes": 8 * 1024 * MB}, {"resume_delay_seconds": 0}, "paused: CPU too hot"),
        ({"cpu_temp_c": 20}, {}, "waiting: 2 other program(s) computing on the GPU"),
        ({"other_gpu_processes": 0}, {}, "waiting: other programs use 99% CPU"),
        ({"other_cpu_percent": 0}, {}, "waiting: user active"),
        ({"user_idle_seconds": 999}, {}, "training"),
    ]
    assert run(obs, cfg).reason == "paused: on battery"
    for obs_change, cfg_change, prefix in chain:
        obs, cfg = replace(obs, **obs_change), replace(cfg, **cfg_change)
        assert run(obs, cfg).reason.startswith(prefix), prefix


def test_decide_is_pure():
    state = PolicyState(manual="paused", pause_until=MONDAY_NOON.timestamp() + 10)
    assert run(state=state) == run(state=state)
    assert state == PolicyState(manual="paused", pause_until=MONDAY_NOON.timestamp() + 10)


def test_fmt_minutes():
    assert [fmt_minutes(s) for s in (0, 42, 180, 3725, -3)] == ["0:00", "0:42", "3:00", "1:02:05", "0:00"]
