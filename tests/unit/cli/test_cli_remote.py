"""Where remote commands find the coordinator: flags > env > config file > default."""

from __future__ import annotations

from pathlib import Path

import pytest
from essaim.main import app
from essaim.protocol.errors import InvalidArgument, Unauthenticated
from essaim.remote import DEFAULT_ADDRESS, client_from_options, config_path, normalize_address, resolve
from typer.testing import CliRunner


def _write_config(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_default_address_and_no_token(isolated_env: Path) -> None:
    settings = resolve(env={"ESSAIM_CONFIG": str(isolated_env)})
    assert settings.address == DEFAULT_ADDRESS
    assert settings.address_source == "default"
    assert settings.token is None


def test_precedence_flags_env_file_default(isolated_env: Path) -> None:
    _write_config(
        isolated_env,
        '[client]\nidle_minutes = 3\n\n[coordinator]\naddress = "file.example:7000"\ntoken = "file-token"\n',
    )
    env = {"ESSAIM_CONFIG": str(isolated_env)}
    from_file = resolve(env=env)
    assert (from_file.address, from_file.token) == ("file.example:7000", "file-token")
    assert (from_file.address_source, from_file.token_source) == ("config", "config")

    env |= {"ESSAIM_COORDINATOR": "env.example:7001", "ESSAIM_TOKEN": "env-token"}
    from_env = resolve(env=env)
    assert (from_env.address, from_env.token) == ("env.example:7001", "env-token")

    from_flags = resolve("flag.example:7002", "flag-token", env=env)
    assert (from_flags.address, from_flags.token) == ("flag.example:7002", "flag-token")
    assert (from_flags.address_source, from_flags.token_source) == ("flag", "flag")

    mixed = resolve("flag.example:7002", None, env={"ESSAIM_CONFIG": str(isolated_env)})
    assert (mixed.address, mixed.token, mixed.token_source) == ("flag.example:7002", "file-token", "config")


def test_token_is_never_in_repr(isolated_env: Path) -> None:
    settings = resolve("h:1", "very-secret", env={"ESSAIM_CONFIG": str(isolated_env)})
    assert "very-secret" not in repr(settings)


def test_config_path_default_and_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert config_path({}).name == "config.toml"
    assert config_path({}).parent.name == "essaim"
    assert config_path({"ESSAIM_CONFIG": str(tmp_path / "x.toml")}) == tmp_path / "x.toml"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("127.0.0.1:50051", "127.0.0.1:50051"),
        ("example.org", "example.org:50051"),
        ("grpc://example.org:9/", "example.org:9"),
        ("[::1]:5000", "[::1]:5000"),
        ("[::1]", "[::1]:50051"),
        (" localhost:01234 ", "localhost:1234"),
    ],
)
def test_normalize_address(given: str, expected: str) -> None:
    assert normalize_address(given) == expected


@pytest.mark.parametrize("bad", ["", ":50051", "host:0", "host:70000", "host:http", "::1:5000"])
def test_bad_addresses_are_invalid(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        normalize_address(bad)


def test_broken_config_file_names_the_file(isolated_env: Path) -> None:
    _write_config(isolated_env, "[coordinator\naddress = 1")
    with pytest.raises(InvalidArgument, match=str(isolated_env)):
        resolve(env={"ESSAIM_CONFIG": str(isolated_env)})
    _write_config(isolated_env, "[coordinator]\naddress = 5\n")
    with pytest.raises(InvalidArgument, match=r"coordinator\.address must be a string"):
        resolve(env={"ESSAIM_CONFIG": str(isolated_env)})


def test_broken_config_is_not_read_when_flags_give_everything(isolated_env: Path) -> None:
    _write_config(isolated_env, "not toml [")
    assert resolve("h:1", "t", env={"ESSAIM_CONFIG": str(isolated_env)}).token == "t"


def test_missing_token_says_how_to_pass_one(isolated_env: Path) -> None:
    with pytest.raises(Unauthenticated) as info:
        client_from_options(None, None, env={"ESSAIM_CONFIG": str(isolated_env)})
    message = str(info.value)
    for hint in ("--token", "ESSAIM_TOKEN", str(isolated_env), "token create"):
        assert hint in message


def test_timeout_and_retries_from_env(fake_client, isolated_env: Path) -> None:
    env = {"ESSAIM_CONFIG": str(isolated_env), "ESSAIM_TIMEOUT": "1.5", "ESSAIM_RETRIES": "0"}
    client = client_from_options("h:1", "t", env=env)
    assert (client.timeout, client.retries) == (1.5, 0)
    with pytest.raises(InvalidArgument, match="ESSAIM_TIMEOUT"):
        client_from_options("h:1", "t", env={**env, "ESSAIM_TIMEOUT": "soon"})


def test_commands_use_the_precedence(
    runner: CliRunner, fake_client, isolated_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through a real command: what reaches the client at each level of precedence."""

    def used() -> tuple[str, str | None]:
        client = fake_client.instances[-1]
        return client.address, client.token

    _write_config(isolated_env, '[coordinator]\naddress = "file.example:7000"\ntoken = "file-token"\n')
    assert runner.invoke(app, ["job", "list"]).exit_code == 0
    assert used() == ("file.example:7000", "file-token")

    monkeypatch.setenv("ESSAIM_COORDINATOR", "env.example:7001")
    monkeypatch.setenv("ESSAIM_TOKEN", "env-token")
    assert runner.invoke(app, ["job", "list"]).exit_code == 0
    assert used() == ("env.example:7001", "env-token")

    result = runner.invoke(app, ["job", "list", "--coordinator", "flag.example:7002", "--token", "flag-token"])
    assert result.exit_code == 0
    assert used() == ("flag.example:7002", "flag-token")

    isolated_env.unlink()
    monkeypatch.delenv("ESSAIM_COORDINATOR")
    assert runner.invoke(app, ["coordinator", "volunteers"]).exit_code == 0
    assert used() == (DEFAULT_ADDRESS, "env-token")
