"""The few errors rsthound raises on purpose; each message says what to do next.

`cli.py` is the only place that prints them and picks the exit code.
"""


class RstHoundError(Exception):
    """Base class: an expected failure with a message meant for a person."""


class BadInput(RstHoundError):
    """A file or text that cannot be read as what it claims to be.

    `path` and `offset` (byte offset into the file) say where, when known.
    """

    def __init__(self, message: str, path: str | None = None, offset: int | None = None):
        self.path = path
        self.offset = offset
        where = ""
        if path is not None:
            where = f"{path}: " if offset is None else f"{path}: at byte {offset}: "
        super().__init__(where + message)
        self.reason = message


class NeedPrivilege(RstHoundError):
    """The operation needs a capability or root."""


class NotSupported(RstHoundError):
    """The platform or kernel lacks a feature the operation needs."""
