from __future__ import annotations

from pathlib import Path

import pytest

from dynd.config import ConfigError, load_config
from dynd.core.limits import Limits

BASE = {"name": "n1", "data_dir": "/tmp/x"}


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "dynd.toml"
    path.write_text(text)
    return str(path)


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[node]\nname = "a"\nlisten = "127.0.0.1:9000"\ndata_dir = "/d"\n[limits]\nvalue_bytes_max = 1000\n')
    config = load_config(path, {"name": "b", "listen": None})
    assert (config.name, config.listen, config.data_dir) == ("b", "127.0.0.1:9000", "/d")
    assert config.limits.value_bytes_max == 1000


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("[node\n", "not valid TOML"),
        ("[nodes]\n", "unknown config table"),
        ("[node]\ncolour = 1\n", "unknown key 'colour'"),
        ('[limits]\nvalue_bytes_max = "big"\n', "must be int"),
        ("[limits]\nvalue_bytes_max = 0\n", "positive"),
        ("[limits]\nsiblings_warn = 500\n", "siblings_warn"),
        ("[limits]\nkey_bytes_max = 600\n", "LMDB"),
        ("[cluster]\npartitions = 100\n", "power of two"),
    ],
)
def test_bad_config_is_refused_with_the_reason(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(write(tmp_path, text), BASE)


@pytest.mark.parametrize(
    ("override", "fragment"),
    [({"name": "bad name"}, "node name"), ({"data_dir": ""}, "data_dir"), ({"listen": "host:99999"}, "port")],
)
def test_bad_flags_are_refused(override: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, {**BASE, **override})


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "absent.toml"), BASE)


def test_default_limits_are_consistent() -> None:
    limits = Limits()
    assert limits.frame_bytes_max > limits.value_bytes_max
    assert limits.context_entries_max >= limits.siblings_max + limits.context_prune_threshold
