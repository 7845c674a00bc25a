"""`[node] location` and `dynd --location`: the default is the host name, a bad path is refused
naming the setting (issue 17)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynd import config as config_module
from dynd.config import ConfigError, load_config

BASE = {"name": "n1", "data_dir": "/tmp/x"}


def test_the_default_location_is_the_host_name_made_a_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config_module.socket, "gethostname", lambda: "db-7.example.com")
    assert load_config(None, BASE).location == "db-7.example.com"
    monkeypatch.setattr(config_module.socket, "gethostname", lambda: "my host/#1")
    assert load_config(None, BASE).location == "my-host--1"


def test_the_file_sets_it_and_the_flag_overrides_the_file(tmp_path: Path) -> None:
    path = tmp_path / "dynd.toml"
    path.write_text('[node]\nlocation = "zone-a/rack-2/host-7"\n')
    assert load_config(str(path), BASE).location == "zone-a/rack-2/host-7"
    assert load_config(str(path), {**BASE, "location": "zone-b/h1"}).location == "zone-b/h1"
    assert load_config(str(path), {**BASE, "location": None}).location == "zone-a/rack-2/host-7"


@pytest.mark.parametrize("bad", ["zone a/h1", "a//b", "/a", "a/" * 9 + "a", "x" * 64])
def test_a_bad_location_is_refused_naming_the_setting(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"\[node\] location \(--location\): "):
        load_config(None, {**BASE, "location": bad})


def test_a_location_of_the_wrong_type_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dynd.toml"
    path.write_text("[node]\nlocation = 7\n")
    with pytest.raises(ConfigError, match=r"\[node\] location must be str"):
        load_config(str(path), BASE)
