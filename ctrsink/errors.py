"""The one user-facing error type: the CLI prints its message on one line and exits 2."""


class CtrSinkError(Exception):
    """A problem with the user's input (file, column, option), not a bug."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))
