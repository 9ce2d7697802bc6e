"""The one base class of users' mistakes and unusable inputs.

Every module raises its own subclass (ConfigError, DataError, RunDirError,
...), each with a one-line message that says what to do; the command line
prints it after ``jaxprune <command>: error:`` and exits with status 2, never
a traceback. A ValueError too, for callers that catch that.
"""


class UserError(ValueError):
    """A user's mistake or an unusable input, with a one-line message."""
