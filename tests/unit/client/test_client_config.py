"""Settings: precedence (flags > env > file > defaults), the shared [coordinator] table, bad files and values."""

from __future__ import annotations

import stat
import tomllib

import pytest
from essaim.client.config import Paths, load_settings, render, save_value, write_file
from essaim.client.errors import ConfigError
from essaim.client.settings import SETTINGS, parse_duration, setting


@pytest.fixture
def paths(tmp_path):
    return Paths(
        config_file=tmp_path / "cfg" / "config.toml",
        data_dir=tmp_path / "data",
        runtime_dir=tmp_path / "run",
        log_dir=tmp_path / "logs",
    )


def test_defaults_when_there_is_no_file(paths):
    s = load_settings(paths, env={})
    assert s["policy.idle_minutes"] == 3.0
    assert s.source("policy.idle_minutes") == "default"
    assert s.problems == []


def test_precedence_flags_env_file_defaults(paths):
    write_file(paths.config_file, {"policy": {"idle_minutes": 5, "intensity": "medium", "cpu_max_cores": 2}})
    env = {"ESSAIM_POLICY_IDLE_MINUTES": "7", "ESSAIM_POLICY_INTENSITY": "light"}
    s = load_settings(paths, env=env, flags={"policy.idle_minutes": 9.0})
    assert (s["policy.idle_minutes"], s.source("policy.idle_minutes")) == (9.0, "flag")
    assert (s["policy.intensity"], s.source("policy.intensity")) == ("light", "env")
    assert (s["policy.cpu_max_cores"], s.source("policy.cpu_max_cores")) == (2, "file")
    assert (s["policy.use_gpu"], s.source("policy.use_gpu")) == (True, "default")


def test_save_keeps_the_shared_coordinator_table_and_unknown_keys(paths):
    write_file(
        paths.config_file,
        {"coordinator": {"address": "c:1", "token": "essaim_secret"}, "researcher": {"x": 1}},
    )
    save_value(paths.config_file, "policy.idle_minutes", "4")
    save_value(paths.config_file, "coordinator.address", "c:2")
    raw = tomllib.loads(paths.config_file.read_text())
    assert raw["coordinator"] == {"address": "c:2", "token": "essaim_secret"}
    assert raw["researcher"] == {"x": 1}
    assert raw["policy"]["idle_minutes"] == 4.0
    assert stat.S_IMODE(paths.config_file.stat().st_mode) == 0o600


def test_corrupted_file_is_backed_up_and_defaults_used(paths):
    paths.config_file.parent.mkdir(parents=True)
    paths.config_file.write_text("[policy\nidle_minutes = = 3\n")
    s = load_settings(paths, env={})
    assert s["policy.idle_minutes"] == 3.0
    backups = list(paths.config_file.parent.glob("config.toml.bad-*"))
    assert len(backups) == 1
    assert backups[0].read_text() == "[policy\nidle_minutes = = 3\n"
    assert not paths.config_file.exists()
    assert len(s.problems) == 1
    assert "is not valid TOML" in s.problems[0]
    assert str(backups[0]) in s.problems[0]
    # the next save starts a fresh file; the backup stays
    save_value(paths.config_file, "policy.intensity", "light")
    assert load_settings(paths, env={})["policy.intensity"] == "light"
    assert backups[0].exists()


def test_bad_value_falls_back_for_that_key_only(paths):
    write_file(paths.config_file, {"policy": {"idle_minutes": "soon", "intensity": "medium"}})
    s = load_settings(paths, env={})
    assert s["policy.idle_minutes"] == 3.0
    assert s["policy.intensity"] == "medium"
    assert any("policy.idle_minutes must be a number" in p for p in s.problems)


def test_bad_env_is_reported_and_ignored(paths):
    s = load_settings(paths, env={"ESSAIM_POLICY_USE_GPU": "maybe"})
    assert s["policy.use_gpu"] is True
    assert any("ESSAIM_POLICY_USE_GPU" in p for p in s.problems)


@pytest.mark.parametrize(
    ("key", "raw", "value"),
    [
        ("policy.use_gpu", "off", False),
        ("policy.use_gpu", "YES", True),
        ("policy.cpu_max_cores", "4", 4),
        ("policy.idle_minutes", "2.5", 2.5),
        ("policy.intensity", "medium", "medium"),
        ("schedule.mon", "09:00-17:00, 22:00-06:00", "09:00-17:00, 22:00-06:00"),
    ],
)
def test_parse_values(key, raw, value):
    assert setting(key).parse(raw) == value


@pytest.mark.parametrize(
    ("key", "raw", "words"),
    [
        ("policy.intensity", "max", "one of light, medium, full"),
        ("policy.cpu_max_percent", "150", "at most 100"),
        ("policy.cpu_max_cores", "1.5", "whole number"),
        ("policy.idle_minutes", "-1", "at least 0"),
        ("schedule.tue", "9-5", "cannot read"),
        ("schedule.tue", "25:00-26:00", "not a range"),
    ],
)
def test_bad_values_say_what_is_wrong(key, raw, words):
    with pytest.raises(ConfigError, match=words):
        setting(key).parse(raw)


def test_unknown_key_suggests_close_ones():
    with pytest.raises(ConfigError, match=r"did you mean policy\.idle_minutes"):
        setting("idle_minutes")


def test_every_setting_has_a_distinct_flag_and_env():
    flags = [s.flag for s in SETTINGS.values()]
    assert len(flags) == len(set(flags))
    assert all(s.env.startswith("ESSAIM_") for s in SETTINGS.values())


def test_render_marks_sources(paths):
    text = render(load_settings(paths, env={}, flags={"policy.intensity": "light"}))
    assert 'policy.intensity = "light"    # flag' in text
    assert "policy.idle_minutes = 3.0" in text
    # each key says what it does, on the line above it
    lines = text.splitlines()
    assert lines[lines.index("policy.idle_minutes = 3.0") - 1] == f"# {SETTINGS['policy.idle_minutes'].help}"


def test_durations():
    assert [parse_duration(t) for t in ("90", "30s", "15m", "1h", "2d", "1.5h")] == [
        90,
        30,
        900,
        3600,
        172800,
        5400,
    ]
    with pytest.raises(ConfigError):
        parse_duration("soon")


def test_two_data_dirs_are_two_volunteers(tmp_path, monkeypatch):
    """Each data dir has its own control endpoint, key and logs, even where the desktop gives the
    user one runtime dir (XDG_RUNTIME_DIR): a second volunteer on the machine is not the first."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    a = Paths.default({"ESSAIM_DATA_DIR": str(tmp_path / "a"), "ESSAIM_CONFIG": str(tmp_path / "a.toml")})
    b = Paths.default({"ESSAIM_DATA_DIR": str(tmp_path / "b"), "ESSAIM_CONFIG": str(tmp_path / "b.toml")})
    assert a.control_address != b.control_address
    assert a.control_address.parent == tmp_path / "a" / "run"
    assert a.identity_file != b.identity_file and a.log_dir != b.log_dir


def test_paths_follow_the_environment(tmp_path):
    p = Paths.default(
        {
            "ESSAIM_CONFIG": str(tmp_path / "c.toml"),
            "ESSAIM_DATA_DIR": str(tmp_path / "d"),
            "ESSAIM_RUNTIME_DIR": str(tmp_path / "r"),
        }
    )
    assert p.config_file == tmp_path / "c.toml"
    assert p.identity_file == tmp_path / "d" / "identity.pem"
    assert p.control_address.parent == tmp_path / "r"
