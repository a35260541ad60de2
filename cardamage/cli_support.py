"""What every ``cardamage`` command shares: logging set-up, ``--params``/``--set``, error display,
and click choices read from the registries (strategies, formats)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import Any

import click

from cardamage import __version__
from cardamage.config import load_params
from cardamage.errors import CardamageError

log = logging.getLogger("cardamage")

#: Errors that are the user's to fix: shown as one line, no traceback (``-v`` shows it). Besides the
#: cardamage taxonomy, the OS errors that name a user's file (missing, unreadable, a folder).
USER_ERRORS: tuple[type[BaseException], ...] = (CardamageError, FileNotFoundError, PermissionError,
                                                IsADirectoryError, NotADirectoryError)
BUG_LINE = ("cardamage {version}: unexpected {name}: this is a bug in cardamage, not in your input; "
            "please report it with the traceback below")


def setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2) if verbose else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    if verbose < 2:
        for noisy in ("PIL", "matplotlib", "urllib3", "httpx", "absl", "h5py"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


class RegistryChoice(click.Choice):
    """A ``click.Choice`` whose choices are read from a registry each time they are used.

    So a strategy or format registered after this module was imported still shows in ``--help``
    and is accepted on the command line.
    """

    def __init__(self, names: Callable[[], Sequence[str]]) -> None:
        self._names = names
        super().__init__([], case_sensitive=True)

    @property  # type: ignore[override]
    def choices(self) -> tuple[str, ...]:
        return tuple(self._names())

    @choices.setter
    def choices(self, _value: Sequence[str]) -> None:
        pass  # click.Choice.__init__ assigns it; the registry is the source


def strategy_choices() -> list[str]:
    from cardamage.active.strategies import strategy_names

    return strategy_names()


def with_params(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--params`` and ``--set`` to a command and pass the loaded :class:`Params` as ``params``.

    Also turns user errors (:class:`cardamage.errors.CardamageError`: bad parameters, bad input
    files, unreachable services) into a one-line message and exit code 2; any other exception is
    a bug and keeps its traceback, after a line saying so.
    """

    @click.option("--params", "params_file", type=click.Path(dir_okay=False), default=None,
                  help="Read parameters from this file instead of ./params.yaml.")
    @click.option("--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
                  help="Override one parameter for this run (repeatable).")
    @click.pass_context
    @functools.wraps(func)
    def wrapper(ctx: click.Context, params_file: str | None, overrides: tuple[str, ...], **kwargs: Any):
        ctx.meta["cardamage.params_args"] = (params_file, overrides)  # for commands that start others
        try:
            params = load_params(params_file, overrides)
            return func(params=params, **kwargs)
        except click.ClickException:
            raise
        except USER_ERRORS as exc:
            if ctx.find_root().params.get("verbose"):
                log.exception("failed")
            raise click.ClickException(str(exc)) from exc
        except Exception as exc:
            click.echo(BUG_LINE.format(version=__version__, name=type(exc).__name__), err=True)
            raise

    return wrapper
