"""The one exception type for errors a user can cause; the CLI prints its message and exits with code 2."""


class HwnasError(Exception):
    """A problem with the user's input: a bad name, an inconsistent config, a malformed file.

    The message must name the problem in one line. Anything that is not a HwnasError is a bug.
    """
