from __future__ import annotations

import dataclasses
import logging
import os
import re
import tomllib
from pathlib import Path

import pytest

from dynd.cli import next_boot, reload_credentials, secret_id
from dynd.config import Config, ConfigError, Credentials, check_protected_mode, load_config, load_credentials
from dynd.core.limits import Limits
from dynd.protocol.auth import EMPTY_TOKENS, Keyring, new_secret_text
from dynd.shell.security import Security

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
        ('[node]\nlog_format = "xml"\n', "log_format must be one of text, json"),
        ('[node]\ncommit_engine = "fork"\n', "commit_engine must be one of thread, process"),
        ("[node]\ncommit_engine = 1\n", "commit_engine must be str"),
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


def test_commit_engine_comes_from_the_file_or_the_flag(tmp_path: Path) -> None:
    assert load_config(None, BASE).commit_engine == Config().commit_engine
    path = write(tmp_path, '[node]\ncommit_engine = "process"\n')
    assert load_config(path, BASE).commit_engine == "process"
    assert load_config(path, {**BASE, "commit_engine": "thread"}).commit_engine == "thread"
    assert load_config(path, {**BASE, "commit_engine": None}).commit_engine == "process"


def test_log_format_comes_from_the_file_or_the_flag(tmp_path: Path) -> None:
    assert load_config(None, BASE).log_format == "text"
    path = write(tmp_path, '[node]\nlog_format = "json"\n')
    assert load_config(path, BASE).log_format == "json"
    assert load_config(path, {**BASE, "log_format": "text"}).log_format == "text"


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "absent.toml"), BASE)


def test_default_limits_are_consistent() -> None:
    limits = Limits()
    assert limits.frame_bytes_max > limits.value_bytes_max
    assert limits.context_entries_max >= limits.siblings_max + limits.context_prune_threshold


# ---- [node] join ----


def test_join_may_be_set_in_the_file_and_the_flag_wins(tmp_path: Path) -> None:
    path = write(tmp_path, '[node]\njoin = "10.0.0.1:7400"\n')
    assert load_config(path, BASE).join == "10.0.0.1:7400"
    assert load_config(path, {**BASE, "join": "10.0.0.2:7400"}).join == "10.0.0.2:7400"


def test_a_bad_join_address_in_the_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="join address"):
        load_config(write(tmp_path, '[node]\njoin = "host:99999"\n'), BASE)


# ---- [security]: settings ----


def secret_file(tmp_path: Path, text: str | None = None, mode: int = 0o600, name: str = "secret") -> Path:
    path = tmp_path / name
    path.write_text(new_secret_text() if text is None else text)
    path.chmod(mode)
    return path


def test_security_defaults_are_no_secret_no_tokens_no_tls() -> None:
    config = load_config(None, BASE)
    assert (config.cluster_secret_file, config.client_tokens_file, config.trusted_network) == ("", "", False)
    assert not config.tls_enabled
    assert load_credentials(config) == Credentials(None, EMPTY_TOKENS, ())


def test_every_security_key_is_read_from_the_file(tmp_path: Path) -> None:
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("x")
    path = write(
        tmp_path,
        "[security]\n"
        f'cluster_secret_file = "{tmp_path}/secret"\n'
        f'client_tokens_file = "{tmp_path}/tokens"\n'
        "trusted_network = true\n"
        f'tls_cert_file = "{tmp_path}/cert.pem"\n'
        f'tls_key_file = "{tmp_path}/key.pem"\n'
        f'tls_ca_file = "{tmp_path}/ca.pem"\n',
    )
    config = load_config(path, BASE)
    assert config.cluster_secret_file == f"{tmp_path}/secret"
    assert config.client_tokens_file == f"{tmp_path}/tokens"
    assert config.trusted_network is True
    assert (config.tls_cert_file, config.tls_key_file, config.tls_ca_file) == (
        f"{tmp_path}/cert.pem",
        f"{tmp_path}/key.pem",
        f"{tmp_path}/ca.pem",
    )
    assert config.tls_enabled


def test_security_flags_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[security]\ncluster_secret_file = "/a"\nclient_tokens_file = "/b"\ntrusted_network = false\n')
    config = load_config(path, {**BASE, "cluster_secret_file": "/c", "client_tokens_file": "/d", "trusted_network": True})
    assert (config.cluster_secret_file, config.client_tokens_file, config.trusted_network) == ("/c", "/d", True)
    # A flag left out (None) keeps the file's value.
    config = load_config(path, {**BASE, "cluster_secret_file": None, "trusted_network": None})
    assert (config.cluster_secret_file, config.trusted_network) == ("/a", False)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ('[security]\ntrusted_network = "yes"\n', "trusted_network must be bool"),
        ("[security]\ncluster_secret_file = 1\n", "cluster_secret_file must be str"),
        ("[security]\nsecret = 1\n", "unknown key 'secret' in \\[security\\]"),
        ('[security]\ntls_cert_file = "/c"\n', "tls_cert_file set without tls_key_file and tls_ca_file"),
        ('[security]\ntls_cert_file = "/c"\ntls_key_file = "/k"\n', "without tls_ca_file"),
        ('[security]\ntls_ca_file = "/ca"\n', "tls_ca_file set without tls_cert_file and tls_key_file"),
        ('[security]\ntls_cert_file = "/nonexistent/c"\ntls_key_file = "/k"\ntls_ca_file = "/ca"\n', "tls_cert_file /nonexistent/c: cannot read"),
    ],
)
def test_bad_security_settings_are_refused(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(write(tmp_path, text), BASE)


# ---- [security]: the files ----


def test_a_secret_file_gives_the_keyring(tmp_path: Path) -> None:
    first, second = "ab" * 32, "cd" * 32
    path = secret_file(tmp_path, f"# rotation in progress\n{first}\n{second}\n")
    credentials = load_credentials(load_config(None, {**BASE, "cluster_secret_file": str(path)}))
    assert credentials.keyring == Keyring((bytes.fromhex(first), bytes.fromhex(second)))
    assert credentials.warnings == ()


def test_a_tokens_file_gives_the_token_table(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("admin " + "a" * 20 + "\nclient " + "c" * 20 + "\n")
    credentials = load_credentials(load_config(None, {**BASE, "client_tokens_file": str(path)}))
    assert credentials.tokens.role_of("a" * 20) == "admin"
    assert credentials.tokens.role_of("c" * 20) == "client"
    assert credentials.tokens.role_of("x" * 20) is None


@pytest.mark.parametrize(
    ("setting", "text", "fragment"),
    [
        ("cluster_secret_file", "", "cluster_secret_file .* holds no secret"),
        ("cluster_secret_file", "not hex\n", "cluster_secret_file .* line 1: a secret is written as hex"),
        ("cluster_secret_file", "abcd\n", "cluster_secret_file .* line 1: a secret must be at least 32 bytes"),
        ("cluster_secret_file", ("ab" * 32 + "\n") * 3, "cluster_secret_file .* holds 3 secrets"),
        ("client_tokens_file", "root " + "a" * 20 + "\n", "client_tokens_file .* line 1: expected 'client TOKEN'"),
        ("client_tokens_file", "admin short\n", "client_tokens_file .* line 1: a token must be at least 16"),
    ],
)
def test_malformed_credential_files_are_config_errors_naming_the_setting(tmp_path: Path, setting: str, text: str, fragment: str) -> None:
    path = secret_file(tmp_path, text)
    with pytest.raises(ConfigError, match=fragment):
        load_credentials(load_config(None, {**BASE, setting: str(path)}))


@pytest.mark.parametrize("setting", ["cluster_secret_file", "client_tokens_file"])
def test_an_unreadable_credential_file_is_a_config_error_naming_the_setting(tmp_path: Path, setting: str) -> None:
    config = load_config(None, {**BASE, setting: str(tmp_path / "absent")})
    with pytest.raises(ConfigError, match=f"{setting} .*absent: cannot read it: No such file"):
        load_credentials(config)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=f"{setting} .*fifo: not a regular file"):
        load_credentials(load_config(None, {**BASE, setting: str(fifo)}))


def test_a_secret_file_not_in_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_bytes(b"\xff\xfe")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="cluster_secret_file .*not UTF-8"):
        load_credentials(load_config(None, {**BASE, "cluster_secret_file": str(path)}))


@pytest.mark.parametrize("mode", [0o604, 0o644, 0o666, 0o601])
def test_a_secret_file_open_to_other_users_is_refused(tmp_path: Path, mode: int) -> None:
    path = secret_file(tmp_path, mode=mode)
    with pytest.raises(ConfigError, match=f"cluster_secret_file .* is open to other users \\(mode 0{mode:o}\\).*chmod 600"):
        load_credentials(load_config(None, {**BASE, "cluster_secret_file": str(path)}))


def test_a_group_readable_secret_file_is_used_with_a_warning(tmp_path: Path) -> None:
    path = secret_file(tmp_path, mode=0o640)
    credentials = load_credentials(load_config(None, {**BASE, "cluster_secret_file": str(path)}))
    assert credentials.keyring is not None
    (warning,) = credentials.warnings
    assert "cluster_secret_file" in warning and "open to its group (mode 0640)" in warning


def test_a_world_readable_tokens_file_is_used_with_a_warning(tmp_path: Path) -> None:
    path = secret_file(tmp_path, "admin " + "a" * 20 + "\n", mode=0o644, name="tokens")
    credentials = load_credentials(load_config(None, {**BASE, "client_tokens_file": str(path)}))
    assert credentials.tokens.role_of("a" * 20) == "admin"
    (warning,) = credentials.warnings
    assert "client_tokens_file" in warning and "open to other users" in warning


# ---- protected mode ----


@pytest.mark.parametrize("listen", ["127.0.0.1:7400", "127.1.2.3:7400", "[::1]:7400", "localhost:7400"])
def test_loopback_needs_no_secret(listen: str) -> None:
    assert check_protected_mode(load_config(None, {**BASE, "listen": listen}), has_secret=False) is None


@pytest.mark.parametrize("listen", ["0.0.0.0:7400", "[::]:7400", "10.0.0.1:7400", "db1.example:7400"])
def test_beyond_loopback_without_a_secret_is_refused_naming_both_settings(listen: str) -> None:
    config = load_config(None, {**BASE, "listen": listen, "advertise": "10.0.0.1:7400"})
    with pytest.raises(ConfigError, match="protected mode") as caught:
        check_protected_mode(config, has_secret=False)
    assert "cluster_secret_file" in str(caught.value) and "trusted_network" in str(caught.value)
    assert check_protected_mode(config, has_secret=True) is None


def test_trusted_network_lets_a_node_without_a_secret_listen_anywhere_with_a_warning() -> None:
    config = load_config(None, {**BASE, "listen": "0.0.0.0:7400", "advertise": "10.0.0.1:7400", "trusted_network": True})
    warning = check_protected_mode(config, has_secret=False)
    assert warning is not None and "anyone who reaches 0.0.0.0:7400 can" in warning


# ---- dynd.cli: boot numbers and SIGHUP reloads ----


def test_boot_grows_with_every_start_and_with_the_wall_clock() -> None:
    assert next_boot(None, 1_000) == 1_000
    assert next_boot(b"1000", 1_000) == 1_001  # two starts within a millisecond
    assert next_boot(b"5000", 1_000) == 5_001  # the wall clock stepped back
    assert next_boot(b"5000", 9_000) == 9_000


class Swim:
    def __init__(self) -> None:
        self.keyrings: list[Keyring | None] = []

    def set_keyring(self, keyring: Keyring | None) -> None:
        self.keyrings.append(keyring)


def test_sighup_rotates_the_secret_and_tokens_in_place_and_logs_no_secret(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    old, new = "ab" * 32, "cd" * 32
    secret = secret_file(tmp_path, old + "\n")
    tokens = secret_file(tmp_path, "admin " + "a" * 20 + "\n", name="tokens")
    config = load_config(None, {**BASE, "cluster_secret_file": str(secret), "client_tokens_file": str(tokens)})
    security = Security(keyring=load_credentials(config).keyring, tokens=load_credentials(config).tokens)
    swim = Swim()
    secret.write_text(f"{new}\n{old}\n")
    tokens.write_text("admin " + "a" * 20 + "\nclient " + "c" * 20 + "\n")
    with caplog.at_level(logging.INFO, logger="dynd"):
        assert reload_credentials(config, security, swim.set_keyring)
    assert security.keyring == Keyring((bytes.fromhex(new), bytes.fromhex(old)))
    assert security.tokens.role_of("c" * 20) == "client"
    assert swim.keyrings == [security.keyring]
    text = caplog.text
    old_id, new_id = secret_id(bytes.fromhex(old)), secret_id(bytes.fromhex(new))
    assert f"cluster secret now {new_id} (proves), {old_id} (accepted), was {old_id}" in text
    assert "client tokens now 1 admin, 1 client (1 added, 0 removed)" in text
    assert old not in text and new not in text


@pytest.mark.parametrize("damage", ["", "not hex\n", "mode"])
def test_sighup_keeps_the_credentials_in_force_when_the_file_is_bad(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    secret = secret_file(tmp_path)
    config = load_config(None, {**BASE, "cluster_secret_file": str(secret)})
    keyring = load_credentials(config).keyring
    security = Security(keyring=keyring)
    swim = Swim()
    if damage == "mode":
        secret.chmod(0o644)
    else:
        secret.write_text(damage)
    with caplog.at_level(logging.INFO, logger="dynd"):
        assert not reload_credentials(config, security, swim.set_keyring)
    assert security.keyring is keyring and swim.keyrings == []
    assert "SIGHUP: kept the credentials in force" in caplog.text and "cluster_secret_file" in caplog.text


def test_sighup_cannot_add_a_secret_to_a_node_that_started_without_one(caplog: pytest.LogCaptureFixture) -> None:
    security = Security()
    with caplog.at_level(logging.INFO, logger="dynd"):
        assert reload_credentials(load_config(None, BASE), security, Swim().set_keyring)
    assert security.keyring is None
    assert "one cannot be added to a running node" in caplog.text


SHIPPED = Path(__file__).resolve().parents[2] / "deploy" / "dynd.toml"


def test_the_shipped_config_listens_beyond_loopback_only_with_a_secret() -> None:
    config = load_config(str(SHIPPED), {})
    assert config.listen.startswith("0.0.0.0:")
    assert config.cluster_secret_file == "/etc/dynd/secret" and not config.trusted_network
    with pytest.raises(ConfigError, match="protected mode"):
        check_protected_mode(config, has_secret=False)


def test_the_shipped_config_lists_every_limit_at_its_default() -> None:
    """An example that silently sets a limit away from its default changes how a node copied
    from it behaves; one that leaves a limit out hides it from the operator."""
    config = load_config(str(SHIPPED), {})
    assert config.limits == Limits()
    listed = set(tomllib.loads(SHIPPED.read_text())["limits"])
    assert listed == {f.name for f in dataclasses.fields(Limits)}


def test_join_and_seeds_come_from_the_file_alone(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[node]\nname = "b"\ndata_dir = "/d"\nlisten = "0.0.0.0:7400"\nadvertise = "10.0.0.2:7400"\n'
        'join = "10.0.0.1:7400"\nseeds = ["10.0.0.1:7400", "10.0.0.3:7400"]\n',
    )
    config = load_config(path, {"join": None, "seeds": None})  # what dynd passes when no flag is given
    assert config.join == "10.0.0.1:7400" and config.seeds == ("10.0.0.1:7400", "10.0.0.3:7400")
    assert config.advertised_address == "10.0.0.2:7400"


@pytest.mark.parametrize("listen", ["0.0.0.0:7400", "[::]:7400"])
def test_a_wildcard_listen_needs_an_advertise_address(listen: str) -> None:
    with pytest.raises(ConfigError, match=r"set \[node\] advertise \(or --advertise\) to the HOST:7400"):
        load_config(None, {**BASE, "listen": listen})
    assert load_config(None, {**BASE, "listen": listen, "advertise": "db1.example:7400"}).advertised_address == "db1.example:7400"


@pytest.mark.parametrize(
    ("advertise", "fragment"),
    [
        ("0.0.0.0:7400", "is a wildcard"),
        ("[::]:7400", "is a wildcard"),
        ("10.0.0.1:7500", "must use the same port"),
        ("10.0.0.1:x", "bad port"),
    ],
)
def test_a_bad_advertise_address_is_refused(advertise: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, {**BASE, "listen": "0.0.0.0:7400", "advertise": advertise})


@pytest.mark.parametrize(("listen", "advertise", "join"), [("127.0.0.1:7400", "", "127.0.0.1:7400"), ("0.0.0.0:7400", "10.0.0.1:7400", "10.0.0.1:7400")])
def test_joining_through_ones_own_address_is_refused(listen: str, advertise: str, join: str) -> None:
    with pytest.raises(ConfigError, match="is this node's own address"):
        load_config(None, {**BASE, "listen": listen, "advertise": advertise, "join": join})


def test_the_advertised_and_seed_addresses_are_written_one_way() -> None:
    """As the membership writes them, so a node finds itself among the seeds and join targets."""
    assert load_config(None, {**BASE, "listen": "127.0.0.1"}).advertised_address == "127.0.0.1:7400"
    assert load_config(None, {**BASE, "listen": "[::1]:7401"}).advertised_address == "[::1]:7401"
    assert load_config(None, {**BASE, "seeds": [" 10.0.0.1", "[::1]:7401"]}).seed_addresses == ("10.0.0.1:7400", "[::1]:7401")


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({}, "no node name: give --name NAME, or --config FILE with [node] name"),
        ({"name": "n1"}, "no data directory: give --data-dir DIR"),
        ({"name": "-bad"}, "node name '-bad' must be"),
    ],
)
def test_a_missing_name_or_data_dir_is_named(overrides: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_config(None, overrides)
