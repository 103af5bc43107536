"""One exception type for bad user input, so callers can catch it and the CLI can print it as one line."""


class SctraceInputError(ValueError):
    """Raised for input a user can fix; the message names the problem and the fix."""
