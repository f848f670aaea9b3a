"""Settings: secrets generated once into a private .env, precedence, and clear errors."""

from __future__ import annotations

import stat

import pytest

from careflow_ha.errors import UsageError
from careflow_ha.settings import PORT_DEFAULTS, SECRET_KEYS, load_settings


def test_first_run_generates_every_secret_into_a_0600_env(tmp_path):
    settings = load_settings(tmp_path, environ={})
    env = tmp_path / ".env"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    text = env.read_text()
    for key in SECRET_KEYS:
        assert f"{key}=" in text
        assert len(settings.secrets[key]) >= 24
    assert len(set(settings.secrets.values())) == len(SECRET_KEYS), "every secret must be different"


def test_second_run_keeps_existing_secrets_and_restores_mode(tmp_path):
    first = load_settings(tmp_path, environ={})
    (tmp_path / ".env").chmod(0o644)
    second = load_settings(tmp_path, environ={})
    assert dict(first.secrets) == dict(second.secrets)
    assert stat.S_IMODE((tmp_path / ".env").stat().st_mode) == 0o600


def test_a_missing_secret_is_added_without_touching_the_others(tmp_path):
    (tmp_path / ".env").write_text("CAREFLOW_APP_PASSWORD=kept-value-kept-value-1234\n")
    settings = load_settings(tmp_path, environ={})
    assert settings.secrets["CAREFLOW_APP_PASSWORD"] == "kept-value-kept-value-1234"
    assert all(settings.secrets[k] for k in SECRET_KEYS)


@pytest.mark.parametrize(
    "env_file,environ,overrides,expected",
    [
        ("", {}, None, 5000),  # default
        ("CAREFLOW_RW_PORT=6000\n", {}, None, 6000),  # .env
        ("CAREFLOW_RW_PORT=6000\n", {"CAREFLOW_RW_PORT": "6100"}, None, 6100),  # env beats .env
        ("CAREFLOW_RW_PORT=6000\n", {"CAREFLOW_RW_PORT": "6100"}, {"CAREFLOW_RW_PORT": 6200}, 6200),  # flag wins
    ],
)
def test_port_precedence_flag_env_dotenv_default(tmp_path, env_file, environ, overrides, expected):
    (tmp_path / ".env").write_text(env_file)
    assert load_settings(tmp_path, overrides=overrides, environ=environ).port("CAREFLOW_RW_PORT") == expected


@pytest.mark.parametrize(
    "value,message",
    [("abc", "is not a port number"), ("80", "outside 1024-65535"), ("70000", "outside 1024-65535")],
)
def test_bad_port_values_name_the_fix(tmp_path, value, message):
    with pytest.raises(UsageError, match=message) as exc:
        load_settings(tmp_path, environ={"CAREFLOW_RO_PORT": value})
    assert "CAREFLOW_RO_PORT" in str(exc.value)


def test_two_services_on_one_port_is_refused(tmp_path):
    with pytest.raises(UsageError, match="port 5000 is assigned to CAREFLOW_RW_PORT, CAREFLOW_RO_PORT"):
        load_settings(tmp_path, environ={"CAREFLOW_RO_PORT": "5000"})


def test_dsn_quotes_the_password_and_redacted_dsn_hides_it(tmp_path):
    settings = load_settings(tmp_path, environ={"CAREFLOW_APP_PASSWORD": "p@ss/word:x"})
    assert "p%40ss%2Fword%3Ax@127.0.0.1:5000/careflow" in settings.dsn("rw", "app")
    assert "p@ss" not in settings.redacted_dsn("rw", "app")
    assert settings.redacted_dsn("ro", "ro") == (
        "postgresql://careflow_ro:***@127.0.0.1:5001/careflow?connect_timeout=5&application_name=careflow-ha"
    )


def test_compose_env_has_ports_and_no_secrets(tmp_path):
    settings = load_settings(tmp_path, environ={})
    env = settings.compose_env()
    assert set(env) == set(PORT_DEFAULTS)
    assert not set(env.values()) & set(settings.secrets.values())
