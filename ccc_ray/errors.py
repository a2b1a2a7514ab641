"""The one exception type users see for bad input.

The CLI turns a `CccError` into one line on stderr and exit code 2; anything else is a bug and keeps
its traceback.
"""


class CccError(ValueError):
    """Bad input: the message names the input, what was wrong, and what would be right."""
