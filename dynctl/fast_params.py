"""Read plain option values (text, numbers, paths) without pydantic.

Typer 0.2x converts every option value through a pydantic TypeAdapter, and importing pydantic and
building the adapters costs about 70 ms: more than the rest of `dynctl get`. dynctl's options are
text, whole numbers and decimals with bounds, paths, flags and repeatable text options;
`speed_up_command` gives each such parameter a converter written here, and leaves any other
(choices, other lists, a custom parser) to Typer.

It relies on two details of Typer's parameters, `type_descriptor` and the lazily built
`_runtime_param`, and touches a parameter only when both are there as expected: a Typer without them
(older, or changed) keeps its own conversion, which is slower but right. The test
`test_a_plain_get_put_and_delete_load_no_heavy_module` (tests/cli/test_dynctl_errors.py) notices.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

import typer

_MISSING = object()


class _Converter:
    """Stands in for Typer's runtime parameter: `coerce(value, param, ctx)`."""

    def __init__(self, convert: Any) -> None:
        self._convert = convert

    def coerce(self, value: Any, param: Any, ctx: Any) -> Any:
        if value is None:
            return None
        try:
            return self._convert(value, param, ctx)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), ctx=ctx, param=param) from None


def _text(value: Any, param: Any, ctx: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(sys.getfilesystemencoding(), "surrogateescape")
    return str(value)


_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off", ""})


def _boolean(value: Any, param: Any, ctx: Any) -> bool:
    # A flag's value is a bool already; text comes from an environment variable or a non-flag option.
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{value!r} is not a boolean (true or false)")


def _number(kind: type, lowest: float | None, highest: float | None) -> Any:
    noun = "a whole number" if kind is int else "a number"

    def convert(value: Any, param: Any, ctx: Any) -> float:
        if isinstance(value, kind) and not isinstance(value, bool):
            number = value
        else:
            try:
                number = kind(str(value).strip())
            except ValueError:
                raise ValueError(f"{value!r} is not {noun}") from None
        if isinstance(number, float) and not math.isfinite(number):
            raise ValueError(f"{value!r} is not a finite number")
        if lowest is not None and number < lowest:
            raise ValueError(f"{number} is less than {lowest:g}, the least allowed")
        if highest is not None and number > highest:
            raise ValueError(f"{number} is more than {highest:g}, the most allowed")
        return number

    return convert


def _path(info: Any) -> Any:
    # Typer's own checks (exists, file_okay, dir_okay, readable, ...) with their messages; they
    # use pydantic only to turn text into a Path, which is done here first.
    try:
        from typer._param_types import coerce_cli_path
    except ImportError:
        return None

    def convert(value: Any, param: Any, ctx: Any) -> Any:
        path = Path(os.fsdecode(value)) if isinstance(value, bytes) else Path(value)
        return coerce_cli_path(path, info, path_type=Path, param=param, ctx=ctx)

    return convert


def converter_for(param: Any) -> _Converter | None:
    """A pydantic-free converter for `param`, or None to leave it to Typer."""
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is None or getattr(param, "_runtime_param", _MISSING) is not None:
        return None
    if getattr(param, "nargs", 1) != 1:
        return None
    if getattr(param, "multiple", False):  # a repeatable option: only of text (put --meta)
        if descriptor.annotation != list[str] or getattr(descriptor, "is_choice", True):
            return None
        return _Converter(lambda values, param, ctx: [_text(value, param, ctx) for value in values])
    info = descriptor.parameter_info
    if getattr(info, "parser", None) is not None or getattr(info, "click_type", None) is not None:
        return None
    if getattr(info, "clamp", False) or getattr(descriptor, "is_choice", True):
        return None
    annotation = descriptor.annotation
    if annotation is str:
        return _Converter(_text)
    if annotation is bool:
        return _Converter(_boolean)
    if annotation in (int, float):
        return _Converter(_number(annotation, info.min, info.max))
    if annotation is Path and getattr(info, "path_type", None) in (None, Path):
        convert = _path(info)
        return _Converter(convert) if convert is not None else None
    return None


def speed_up(params: list[Any]) -> None:
    """Give each parameter in `params` that `converter_for` understands its converter."""
    for param in params:
        converter = converter_for(param)
        if converter is not None:
            param._runtime_param = converter


def speed_up_command(command: Any) -> None:
    """`speed_up` the parameters of `command`, its --help option among them (which click makes
    when a context first asks for it)."""
    speed_up(command.params)
    make_help_option = command.get_help_option

    def get_help_option(ctx: Any) -> Any:
        option = make_help_option(ctx)
        if option is not None:
            speed_up([option])
        return option

    command.get_help_option = get_help_option


def speed_up_all(command: Any) -> None:
    """`speed_up_command` on `command` and, for a group, on every command under it."""
    speed_up_command(command)
    for subcommand in getattr(command, "commands", {}).values():
        speed_up_all(subcommand)
