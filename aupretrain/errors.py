"""Errors that are the user's to fix (a setting, an input), reported by every entry point as one line."""


class UsageError(ValueError):
    """A setting or input that cannot work, found before (or instead of) doing the work: the message names
    the file or config key, what is wrong, and what to change. Entry points print it as one line
    (`<program>: error: <message>`) and exit with status 2."""
