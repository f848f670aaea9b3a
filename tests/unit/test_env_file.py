"""``.env`` as editors leave it: no final newline, CRLF, a key twice; and port errors that never echo it."""

from __future__ import annotations

import pytest
from dotenv import dotenv_values

from careflow_ha.errors import UsageError
from careflow_ha.settings import SECRET_KEYS, ensure_env_file, load_settings

SECRET = "kept-secret-value-0123456789"


def test_a_file_without_a_final_newline_gets_one_before_new_secrets(tmp_path):
    env = tmp_path / ".env"
    env.write_bytes(b"CAREFLOW_RW_PORT=6000")  # as an editor may save it
    settings = load_settings(tmp_path, environ={})
    assert settings.port("CAREFLOW_RW_PORT") == 6000
    lines = env.read_text().splitlines()
    assert lines[0] == "CAREFLOW_RW_PORT=6000"
    assert {line.split("=", 1)[0] for line in lines[1:] if "=" in line} == set(SECRET_KEYS)
    assert load_settings(tmp_path, environ={}).secrets == settings.secrets  # a second run reads the same


def test_crlf_line_endings_are_read_and_kept(tmp_path):
    env = tmp_path / ".env"
    env.write_bytes(b"CAREFLOW_RW_PORT=6000\r\nCAREFLOW_APP_PASSWORD=" + SECRET.encode() + b"\r\n")
    settings = load_settings(tmp_path, environ={})
    assert settings.port("CAREFLOW_RW_PORT") == 6000
    assert settings.secrets["CAREFLOW_APP_PASSWORD"] == SECRET
    data = env.read_bytes()
    assert data.count(b"\n") == data.count(b"\r\n"), "appended lines follow the file's CRLF"
    assert all("\r" not in v for v in dotenv_values(env).values())


def test_crlf_without_a_final_line_ending(tmp_path):
    env = tmp_path / ".env"
    env.write_bytes(b"CAREFLOW_RO_PORT=6001\r\nCAREFLOW_RW_PORT=6000")
    settings = load_settings(tmp_path, environ={})
    assert (settings.port("CAREFLOW_RW_PORT"), settings.port("CAREFLOW_RO_PORT")) == (6000, 6001)
    data = env.read_bytes()
    assert data.count(b"\n") == data.count(b"\r\n")


def test_a_duplicated_key_last_one_wins_as_in_a_shell(tmp_path):
    """Documented in ensure_env_file: ``set -a; . ./.env`` keeps the last assignment, and so do we."""
    env = tmp_path / ".env"
    env.write_text("CAREFLOW_RW_PORT=6000\nCAREFLOW_APP_PASSWORD=first-one-first-one-0000\n"
                   f"CAREFLOW_RW_PORT=6100\nCAREFLOW_APP_PASSWORD={SECRET}\n")
    settings = load_settings(tmp_path, environ={})
    assert settings.port("CAREFLOW_RW_PORT") == 6100
    assert settings.secrets["CAREFLOW_APP_PASSWORD"] == SECRET
    assert env.read_text().count("CAREFLOW_APP_PASSWORD=") == 2, "existing lines are never rewritten"


def test_a_complete_file_is_left_byte_for_byte(tmp_path):
    env = tmp_path / ".env"
    ensure_env_file(env)
    before = env.read_bytes()
    ensure_env_file(env)
    assert env.read_bytes() == before


def test_a_secret_glued_onto_a_port_line_is_never_echoed(tmp_path):
    """What the missing newline used to cause: the error must name the variable, not print the line."""
    (tmp_path / ".env").write_text(f"CAREFLOW_RW_PORT=6000CAREFLOW_SUPERUSER_PASSWORD={SECRET}\n")
    with pytest.raises(UsageError) as err:
        load_settings(tmp_path, environ={})
    message = str(err.value)
    assert SECRET not in message and "6000" not in message
    assert "CAREFLOW_RW_PORT in " in message and ".env is not a port number" in message


@pytest.mark.parametrize(
    ("env_file", "environ", "overrides", "expected", "not_said"),
    [
        ("", {}, {"CAREFLOW_RW_PORT": 99999},
         "CAREFLOW_RW_PORT=99999 from the command line is outside 1024-65535", ".env"),
        ("CAREFLOW_RW_PORT=99999\n", {}, None, ".env is outside 1024-65535", "99999"),
        ("CAREFLOW_RW_PORT=6000\n", {"CAREFLOW_RW_PORT": "http"}, None,
         "CAREFLOW_RW_PORT in the environment is not a port number", "http"),
        ("CAREFLOW_RW_PORT=abc\n", {}, {"CAREFLOW_RW_PORT": 6000}, None, None),  # the flag wins; .env not read
    ],
)
def test_port_errors_say_where_the_value_came_from(tmp_path, env_file, environ, overrides, expected, not_said):
    (tmp_path / ".env").write_text(env_file)
    if expected is None:
        assert load_settings(tmp_path, overrides=overrides, environ=environ).port("CAREFLOW_RW_PORT") == 6000
        return
    with pytest.raises(UsageError) as err:
        load_settings(tmp_path, overrides=overrides, environ=environ)
    assert expected in str(err.value)
    assert not_said not in str(err.value).replace(str(tmp_path), "")
