"""calicoctl's failures and its exit codes: 0 done, 1 not found / refused / lost a
compare-and-swap, 2 bad usage or invalid input."""

from __future__ import annotations

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_INVALID = 2


class CtlError(Exception):
    """A failure to report on stderr (one line per entry of `lines`) with `code`."""

    code = EXIT_REFUSED

    def __init__(self, *lines: str) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


class NotFound(CtlError):
    code = EXIT_REFUSED


class Refused(CtlError):
    """The operation is not allowed (exists already, local-only parameter, ...)."""

    code = EXIT_REFUSED


class Conflict(CtlError):
    """Another writer changed the resource between our read and our write."""

    code = EXIT_REFUSED


class Invalid(CtlError):
    """Bad usage or an invalid document: nothing was written."""

    code = EXIT_INVALID


class Unavailable(CtlError):
    """etcd did not answer or refused a request."""

    code = EXIT_REFUSED
