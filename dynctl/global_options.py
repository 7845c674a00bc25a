"""Global options anywhere on the line: `dynctl get k --json` as well as `dynctl --json get k`.

The global options (--node, --json, --timeout, --token-file, --tls-ca) are the root callback's
parameters, and click parses a group's options only before its subcommand. So every command and
group under the root gets a hidden copy of each (`adopt`), and nothing in a command module has to
declare them: a command added later takes them too.

A copy has no default and no environment variable, so it has a value only when given on the
command line; it runs the root option's own check, then records the value in the context's `meta`
(shared along the chain of contexts). Before a command runs, if any were given after the root,
the root callback runs again with them over the root's own values, so the command's `ctx.obj` (the
session) is built from them exactly as it would be from the same options before the command. The
last one on the line wins. A command keeps an option of its own that has the same name: the copy
of a global option is left out there.
"""

from __future__ import annotations

import copy
from typing import Any

LATE_VALUES_KEY = "dynctl.global_options"
COPY_PREFIX = "late_"


def adopt(command: Any, root_params: list[Any]) -> None:
    """Give `command` (and, for a group, each command under it) the root's non-eager options."""
    taken = {option for param in command.params for option in (*param.opts, *param.secondary_opts)}
    for param in root_params:
        if param.param_type_name != "option" or param.is_eager or taken.intersection(param.opts):
            continue
        command.params.append(_late_copy(param))
    subcommands = getattr(command, "commands", None)
    if subcommands is not None:
        for subcommand in subcommands.values():
            adopt(subcommand, root_params)
    else:
        _apply_before_running(command)


def is_late_copy(param: Any) -> bool:
    return bool(getattr(param, "dynctl_global_option", False))


def _late_copy(param: Any) -> Any:
    late = copy.copy(param)
    late.name = COPY_PREFIX + param.name  # its own name, so it cannot collide with the command's
    late.expose_value = False
    late.hidden = True
    late.required = False
    late.default = None
    late.envvar = None
    late.show_envvar = False
    late.dynctl_global_option = True
    check = param.callback

    def remember(ctx: Any, _late: Any, value: Any) -> Any:
        if value is None:  # not on the command line here
            return None
        if check is not None:
            value = check(ctx, param, value)
        ctx.meta.setdefault(LATE_VALUES_KEY, {})[param.name] = value
        return value

    late.callback = remember
    return late


def _apply_before_running(command: Any) -> None:
    run = command.invoke

    def invoke(ctx: Any) -> Any:
        late = ctx.meta.get(LATE_VALUES_KEY)
        if late:
            root = ctx.find_root()
            ctx.invoke(root.command.callback, **{**root.params, **late})
        return run(ctx)

    command.invoke = invoke
