"""dynd's configuration: a TOML file, overridden by command-line flags, checked before start.

    [node]
    name = "node1"              # this node's identity; also the actor in the dots it writes
    listen = "127.0.0.1:7400"
    data_dir = "/var/lib/dynd"
    log_level = "info"

    advertise = ""              # HOST:PORT other nodes use to reach this one (default: listen)
    seeds = []                  # HOST:PORT of nodes to gossip with besides the members

    [cluster]                   # used only by the node that creates the cluster
    partitions = 256            # Q, a power of two, fixed at creation
    replicas = 3                # N
    r = 2
    w = 2

    [limits]                    # every field of dynd.core.limits.Limits, by name
    value_bytes_max = 1048576

Unknown tables or keys, and values of the wrong type, are errors that name the offending key.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

from dynd.core.limits import Limits
from dynd.core.partition import check_partition_count
from dynd.protocol.address import DEFAULT_PORT, parse_address

NODE_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
LOG_LEVELS = ("debug", "info", "warning", "error")
DEFAULT_PARTITIONS = 256


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Config:
    name: str = ""
    listen: str = f"127.0.0.1:{DEFAULT_PORT}"
    data_dir: str = ""
    log_level: str = "info"
    advertise: str = ""
    seeds: tuple[str, ...] = ()
    join: str = ""
    partitions: int | None = None  # None: the cluster's (when joining or restarting), else DEFAULT_PARTITIONS
    replicas: int = 3
    r: int = 2
    w: int = 2
    limits: Limits = field(default_factory=Limits)

    @property
    def partitions_for_new_cluster(self) -> int:
        return self.partitions if self.partitions is not None else DEFAULT_PARTITIONS

    @property
    def advertised_address(self) -> str:
        return self.advertise or self.listen

    @property
    def listen_host_port(self) -> tuple[str, int]:
        return parse_address(self.listen)


_SECTIONS: dict[str, dict[str, type]] = {
    "node": {"name": str, "listen": str, "data_dir": str, "log_level": str, "advertise": str, "seeds": list},
    "cluster": {"partitions": int, "replicas": int, "r": int, "w": int},
}


def load_config(path: str | None, overrides: dict[str, Any]) -> Config:
    """Read the TOML file at `path` (if any), apply non-None `overrides`, and validate the result."""
    values: dict[str, Any] = {}
    limit_values: dict[str, Any] = {}
    if path is not None:
        try:
            with open(path, "rb") as handle:
                document = tomllib.load(handle)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        for section, table in document.items():
            if section == "limits":
                limit_values = _check_table(section, table, {f.name: int for f in dataclasses.fields(Limits)})
            elif section in _SECTIONS:
                values.update(_check_table(section, table, _SECTIONS[section]))
            else:
                raise ConfigError(f"unknown config table [{section}] (known: node, cluster, limits)")
    values.update({key: value for key, value in overrides.items() if value is not None})
    if "seeds" in values:
        if not all(isinstance(seed, str) for seed in values["seeds"]):
            raise ConfigError("[node] seeds must be a list of HOST:PORT strings")
        values["seeds"] = tuple(values["seeds"])
    try:
        limits = Limits(**limit_values)
    except ValueError as exc:
        raise ConfigError(f"[limits]: {exc}") from None
    config = Config(**values, limits=limits)
    _validate(config)
    return config


def _check_table(section: str, table: Any, schema: dict[str, type]) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"[{section}] must be a table")
    checked: dict[str, Any] = {}
    for key, value in table.items():
        expected = schema.get(key)
        if expected is None:
            raise ConfigError(f"unknown key {key!r} in [{section}] (known: {', '.join(sorted(schema))})")
        if type(value) is not expected:
            raise ConfigError(f"[{section}] {key} must be {expected.__name__}, got {type(value).__name__}")
        checked[key] = value
    return checked


def _validate(config: Config) -> None:
    if not NODE_NAME_PATTERN.match(config.name):
        raise ConfigError(
            f"node name {config.name!r} must be 1-64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    if not config.data_dir:
        raise ConfigError("data_dir is required (--data-dir or [node] data_dir)")
    try:
        config.listen_host_port
    except ValueError as exc:
        raise ConfigError(f"listen address: {exc}") from None
    if config.log_level not in LOG_LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
    try:
        check_partition_count(config.partitions_for_new_cluster)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for label, address in [("advertise", config.advertise), ("join", config.join), *(("seed", s) for s in config.seeds)]:
        if address:
            try:
                parse_address(address)
            except ValueError as exc:
                raise ConfigError(f"{label} address: {exc}") from None
    if not 1 <= config.replicas <= 16:
        raise ConfigError("replicas (N) must be in 1..16")
    if not 1 <= config.r <= config.replicas or not 1 <= config.w <= config.replicas:
        raise ConfigError(f"need 1 <= r, w <= replicas; got replicas={config.replicas} r={config.r} w={config.w}")
