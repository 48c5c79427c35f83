"""The one exception type for mistakes a user can make (bad paths, bad recipes, bad input)."""


class NmtError(Exception):
    """A user-caused error: the CLI prints its message on one line and exits with code 2."""
