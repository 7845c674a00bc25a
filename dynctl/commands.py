"""The root command group: each command's module is imported only when that command runs.

`dynctl get` should cost the interpreter, Typer, the protocol and one socket, not every module of
every command (the bench's load generator, the dev cluster, rich's live display, trio). The app
names its commands in a table, `{"get": "dynctl.kv:get", "cluster": "dynctl.cluster:app", ...}`;
`CommandTable` imports a module when its command is looked up (running it, its --help, or the
root's --help, which lists them all), builds the click command (a function becomes a command, a
Typer app a group of them) and prepares it once (`dynctl.global_options`, `dynctl.fast_params`).

Typer and click read `group.commands` as a mapping, so the lazy table is that mapping: listing and
"did you mean" suggestions use its names without importing anything.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import Any

import typer
import typer.core
import typer.main

from dynctl import fast_params, global_options
from dynctl.output import EXIT_CODES_HELP


class CommandTable(MutableMapping[str, Any]):
    """Command name -> click command, built from "module:attribute" on first lookup."""

    def __init__(self, specs: Mapping[str, str], built: Mapping[str, Any], prepare: Callable[[Any], None]) -> None:
        self._specs = dict(specs)
        self._built: dict[str, Any] = {}
        self._prepare = prepare
        for name, command in built.items():  # commands the app registered the usual way
            self[name] = command

    def __getitem__(self, name: str) -> Any:
        command = self._built.get(name)
        if command is None:
            if name not in self._specs:
                raise KeyError(name)
            command = self._built[name] = load_command(name, self._specs[name])
            self._prepare(command)
        return command

    def __setitem__(self, name: str, command: Any) -> None:
        self._prepare(command)
        self._built[name] = command

    def __delitem__(self, name: str) -> None:
        self._specs.pop(name, None)
        del self._built[name]

    def __iter__(self) -> Iterator[str]:
        yield from self._specs
        yield from (name for name in self._built if name not in self._specs)

    def __len__(self) -> int:
        return len(self._specs.keys() | self._built.keys())

    def __contains__(self, name: object) -> bool:
        return name in self._specs or name in self._built


def load_command(name: str, spec: str) -> Any:
    """The click command for `spec` ("module:attribute"): a Typer app's group, or a command built
    from a function the way `app.command(name)` would (with the exit codes as its epilog)."""
    module_name, _, attribute = spec.partition(":")
    target = getattr(importlib.import_module(module_name), attribute)
    if isinstance(target, typer.Typer):
        command = typer.main.get_group(target)  # a group even of one command, as add_typer makes it
    else:
        holder = typer.Typer(add_completion=False, rich_markup_mode=None)
        holder.command(name, epilog=EXIT_CODES_HELP)(target)
        command = typer.main.get_command(holder)
    command.name = name
    return command


def lazy_group(specs: Mapping[str, str]) -> type[typer.core.TyperGroup]:
    """A TyperGroup class (for `typer.Typer(cls=...)`) whose commands are `specs`, loaded lazily."""

    class LazyGroup(typer.core.TyperGroup):
        def __init__(self, *, commands: Mapping[str, Any] | None = None, **attrs: Any) -> None:
            super().__init__(**attrs)
            fast_params.speed_up_command(self)
            root_params = list(self.params)

            def prepare(command: Any) -> None:
                global_options.adopt(command, root_params)
                fast_params.speed_up_all(command)

            self.commands = CommandTable(specs, commands or {}, prepare)

    return LazyGroup
