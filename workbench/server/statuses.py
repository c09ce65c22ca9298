"""Which HTTP status each workbench error is, in one table, raised as ``tornado.web.HTTPError``.

The REST handlers raise :func:`http_error` of whatever the layers raised, so
jupyter_server's ``APIHandler.write_error`` writes its one JSON error shape
(``{"message": ..., "reason": ...}``), as for its own ``/api/contents`` errors. A user
error gets a 4xx status naming what to change; 500 is left to real faults: a workbench
error no row names (a lease folder that cannot be trusted) keeps its message, and any
other exception is a bug, which the handlers let jupyter_server log with its traceback.
"""

from __future__ import annotations

import tornado.web

from .. import errors

#: Error type -> status, most specific first (the first ``isinstance`` match wins).
STATUS_BY_ERROR: tuple[tuple[type[BaseException], int], ...] = (
    (errors.UnsafeNameError, 400),  # a name with '/' or a leading '.', or one resolving outside its root
    (errors.ModelNotFoundError, 404),
    (errors.DeviceNotFoundError, 404),
    (errors.EndpointNotFoundError, 404),
    (errors.ModelNotLoadedError, 404),
    (errors.ConfigError, 400),
    (errors.LoadSpecError, 400),
    (errors.UnsafeModelError, 403),
    (errors.LeaseNotOwnedError, 403),
    (errors.BrokenModelError, 422),  # the request is fine, the model folder is not
    (errors.EstimateUnavailableError, 422),
    (errors.UnsupportedModelError, 422),
    (errors.UntrustedFileError, 422),  # a file of the model folder refused by a bounded reader
    (errors.InsufficientMemoryError, 409),
)


def status_of(exc: BaseException) -> int:
    """The HTTP status for ``exc``: its row in :data:`STATUS_BY_ERROR`, else 500."""
    for kind, status in STATUS_BY_ERROR:
        if isinstance(exc, kind):
            return status
    return 500


class WorkbenchHTTPError(tornado.web.HTTPError):
    """A ``tornado.web.HTTPError`` whose message is shown literally.

    tornado's ``log_message`` doubles every ``%`` of a message given without format
    arguments (for old callers that formatted it again), and ``APIHandler`` writes
    ``log_message`` into the reply; a file name with a ``%`` in it must reach the user as it is.
    """

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(status_code, message)

    @property
    def log_message(self) -> str | None:  # type: ignore[override]
        return self._log_message


def http_error(exc: BaseException) -> tornado.web.HTTPError:
    """``exc`` as the ``HTTPError`` a handler raises: its status and its one-line message.

    Example:
        >>> from workbench.errors import ModelNotFoundError
        >>> http_error(ModelNotFoundError("no model named 'x'", hint="run `workbench store list`")).status_code
        404
    """
    return WorkbenchHTTPError(status_of(exc), str(exc))
