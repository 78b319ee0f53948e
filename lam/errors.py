"""The one error type lamflow raises for bad input; the CLI prints it as a single line."""


class LamflowError(Exception):
    """A problem with the user's input or environment, stated with the bad value.

    Raised instead of `assert` or bare exceptions so the CLI can turn it into one line and a
    non-zero exit code, and so tests can match on the message.
    """
