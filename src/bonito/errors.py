"""The one exception type for mistakes a user can fix."""


class BonitoError(ValueError):
    """A problem with what the user gave (input, option, model); the message says what to do."""


def first_line(error: object) -> str:
    """The first line of an error's message (another library's, to quote in ours), or the name
    of its type when it has none."""
    message = str(error).strip()
    return message.splitlines()[0] if message else type(error).__name__
