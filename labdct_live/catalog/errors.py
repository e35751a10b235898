"""What "the catalog is unavailable" means, once: the exception types, and which of them are
an authentication error or transient.
"""

from __future__ import annotations

import httpx

__all__ = [
    "CATALOG_ERRORS",
    "CatalogUnavailable",
    "describe_catalog_error",
    "is_auth_error",
    "is_transient_error",
]


class CatalogUnavailable(RuntimeError):
    """The catalog server could not be started or reached."""


#: Errors of a catalog request that mean "the catalog is not there right now" (or refused the
#: key): writers spool what they could not write and retry later. Defined here once.
CATALOG_ERRORS = (httpx.TransportError, httpx.HTTPStatusError, ConnectionError, TimeoutError,
                  OSError)


def is_auth_error(exc: BaseException) -> bool:
    """True for an HTTP 401/403 answer: the server is there but refused the API key."""
    return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code in (401, 403)


def is_transient_error(exc: BaseException | None) -> bool:
    """True when ``exc`` (or what caused it) means the server cannot be reached or is
    restarting (connection errors, timeouts, HTTP 502-504): waiting for it will help."""
    if exc is None:
        return False
    if isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, httpx.HTTPStatusError):
        return exc.response.status_code >= 502
    return is_transient_error(exc.__cause__) or is_transient_error(exc.__context__)


def describe_catalog_error(exc: BaseException) -> str:
    """What went wrong talking to the catalog, in words: a refused API key is not the same
    fault as a server that cannot be reached."""
    if is_auth_error(exc):
        return (f"the catalog refused the API key (HTTP {exc.response.status_code}); was the "
                "server restarted with another key?")
    return f"catalog unreachable ({type(exc).__name__}: {exc})"
