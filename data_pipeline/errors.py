"""User-facing errors: the CLI prints these as one line, without a traceback."""


class UserError(Exception):
    """Bad input, a missing path, a wrong recipe key: something the user can fix."""
