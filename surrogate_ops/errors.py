"""The one exception type that reaches the user as a one-line message instead of a traceback."""


class SurrogateOpsError(Exception):
    """A problem the user can fix (missing tool, bad input, bad option); printed as one line."""
