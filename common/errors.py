"""One hierarchy of errors that the command-line tools report in one line, without a traceback."""


class UserError(Exception):
    """Bad input, a missing path, a wrong recipe key, a checkpoint that cannot be used: something the user can fix."""


class ConfigError(UserError, ValueError):
    """A config file, override or parallel layout the user has to fix."""
