"""One exception type for bad user input, so callers can catch it and the CLI can print it as one line.

Messages name the fix in the interface that was called: a Python caller reads ``time_key='day'``, a user of
``sctrace fit`` reads ``--time-key day``. The CLI says which command runs (:func:`set_cli_command`); messages
build their advice with :func:`option_name`, :func:`option` and :func:`in_words`.
"""

from __future__ import annotations

from contextvars import ContextVar, Token

_CLI_COMMAND: ContextVar[str | None] = ContextVar("sctrace_cli_command", default=None)

# Python arguments whose command-line option has another name.
_CLI_NAMES = {"run_dir": "--out", "out_dir": "--out", "data": "DATA"}
# Commands that take --count-kind; the others read data into a fitted run, which says what its data held.
_COUNT_KIND_COMMANDS = ("fit", "prepare", "benchmark", "protocol", "")


class SctraceInputError(ValueError):
    """Raised for input a user can fix; the message names the problem and the fix."""


def set_cli_command(command: str | None) -> Token:
    """Mark the current context as running ``sctrace COMMAND``; reset with the token when the command ends."""
    return _CLI_COMMAND.set(command or "")


def reset_cli_command(token: Token) -> None:
    _CLI_COMMAND.reset(token)


def cli_command() -> str | None:
    """The CLI command running now ('' before it is known), or None for a Python caller."""
    return _CLI_COMMAND.get()


def in_words(python: str, cli: str) -> str:
    """``python`` for a Python caller, ``cli`` for a command-line user: advice they can follow."""
    return python if cli_command() is None else cli


def option_name(name: str) -> str:
    """``time_key`` for a Python caller, ``--time-key`` on the command line."""
    return in_words(name, _CLI_NAMES.get(name, "--" + name.replace("_", "-")))


def option(name: str, value: object) -> str:
    """An argument with its value as the caller writes it: ``layer='counts'`` or ``--layer counts``.

    ``None`` on the command line is leaving the option out; ``True`` is the bare flag. ``count_kind`` is named
    as the run that reads such data on commands without ``--count-kind``.
    """
    if cli_command() is None:
        placeholder = isinstance(value, str) and value.isupper()  # e.g. VALUE, DIR: not a literal to quote
        return f"{name}={value if placeholder else repr(value)}"
    if name == "count_kind" and cli_command() not in _COUNT_KIND_COMMANDS:
        return f"a run fitted with --count-kind {value}"
    flag = option_name(name)
    if value is None:
        return f"no {flag}"
    if value is True:
        return flag
    if value is False:
        return "--no-" + flag.removeprefix("--")
    return f"{flag} {value}"
