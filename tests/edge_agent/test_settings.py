import dataclasses
from pathlib import Path

import pytest

from edge_agent.errors import SettingsError
from edge_agent.settings import SECTIONS, Settings


def test_every_setting_is_documented():
    for f in dataclasses.fields(Settings):
        assert len(f.metadata.get("help", "")) > 15, f"setting {f.name} has no help text"
        # home and timezone are the box's own, at the top of mammo.toml (timezone: the clinic's zone, read by every component)
        assert f.name in ("home", "timezone") or any(f.name.startswith(s + "_") for s in SECTIONS), f"{f.name} has no TOML section prefix"


def test_toml_then_environment_precedence(tmp_path: Path):
    home = tmp_path / "h"
    home.mkdir()
    (home / "mammo.toml").write_text('box_name = "Talas ASM"\n[queue]\nlease_s = 30\nmax_attempts = 7\n', encoding="utf-8")
    s = Settings.load(env={"MAMMO_HOME": str(home), "MAMMO_QUEUE_MAX_ATTEMPTS": "9"})
    assert s.home == home
    assert s.box_name == "Talas ASM"
    assert s.queue_lease_s == 30.0
    assert s.queue_max_attempts == 9


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"MAMMO_QUEUE_LEASE_S": "soon"}, "queue_lease_s"),
        ({"MAMMO_QUEUE_MAX_ATTEMPTS": "0"}, "queue_max_attempts"),
        ({"MAMMO_KIOSK_PORT": "70000"}, "kiosk_port"),
        ({"MAMMO_LOG_LEVEL": "LOUD"}, "log_level"),
        ({"MAMMO_KEYSTORE_DEMO_MODE": "maybe"}, "keystore_demo_mode"),
    ],
)
def test_invalid_setting_names_field_and_fix(tmp_path: Path, env, field):
    with pytest.raises(SettingsError) as err:
        Settings.load(env={"MAMMO_HOME": str(tmp_path), **env})
    assert field in str(err.value)
    assert "Fix:" in str(err.value)


def test_unknown_toml_key_and_broken_toml_are_refused(tmp_path: Path):
    (tmp_path / "mammo.toml").write_text("[queue]\nlease = 3\n", encoding="utf-8")
    with pytest.raises(SettingsError, match="queue_lease"):
        Settings.load(env={"MAMMO_HOME": str(tmp_path)})
    (tmp_path / "mammo.toml").write_text("[queue\n", encoding="utf-8")
    with pytest.raises(SettingsError, match="TOML"):
        Settings.load(env={"MAMMO_HOME": str(tmp_path)})


def test_secrets_are_masked_in_public_view(settings):
    assert settings.public_dict()["keystore_passphrase"] == "***"
