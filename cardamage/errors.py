"""The errors users meet, in one taxonomy.

Every error a user can cause or fix derives from :class:`CardamageError`; the command line prints
those as one line (``Error: <file or key>: <reason>``) and exits with status 1 (a usage error that
click itself reports, such as an unknown option, exits with 2). Any other exception is a bug in
cardamage: the command line shows its traceback and says so.

The kinds keep a standard base as well (``ValueError`` or ``OSError``) so that code and tests that
catch the standard type keep working.
"""

from __future__ import annotations


class CardamageError(Exception):
    """Base of every error a user can act on; the message is one line naming the file or key."""


class BadParameterError(CardamageError, ValueError):
    """A parameter (``params.yaml``, ``--set``, a command-line option) with an unusable value."""


class BadInputError(CardamageError, ValueError):
    """An input file that cannot be used: unreadable, corrupt, in no known format, inconsistent."""


class EmptyInputError(BadInputError):
    """Nothing to work on: an empty pool, a folder without readable photos."""


class ModelMismatchError(BadInputError):
    """A model file that does not fit the task: other classes, other input size, not a cardamage model."""


class ServiceError(CardamageError, OSError):
    """A service (Label Studio, Ray) that cannot be reached, refuses the credentials or times out."""


class MissingExtraError(CardamageError, ImportError):
    """An optional dependency (``pip install -e .[extra]``) that is not installed."""
