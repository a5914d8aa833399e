"""The one exception type for mistakes a user can fix."""


class BonitoError(ValueError):
    """A problem with what the user gave (input, option, model); the message says what to do."""
