"""Connect to a tiled catalog, checking first that it answers and that the key is accepted."""

from __future__ import annotations

import os

import httpx

from labdct_live.catalog.errors import CatalogUnavailable

__all__ = [
    "connect",
]


def _probe_catalog(uri: str, api_key: str | None, timeout: float) -> None:
    """Raise :class:`CatalogUnavailable` at once if ``uri`` does not answer or refuses the key.

    tiled's ``from_uri`` retries a connection failure for about half a minute and then
    raises a chain of three errors; one ``/healthz`` request with a short timeout tells an
    unreachable server apart, and one authenticated metadata request a refused key.
    """
    url = httpx.URL(uri)
    path = url.path.split("/api", 1)[0].rstrip("/")  # the server root, as tiled derives it
    root = url.copy_with(path=path or "/", query=None, fragment=None)
    base = str(root).rstrip("/")
    try:
        health = httpx.get(f"{base}/healthz", timeout=timeout, follow_redirects=True)
    except httpx.HTTPError as exc:
        raise CatalogUnavailable(f"the catalog at {uri} is unreachable "
                                 f"({type(exc).__name__}: {exc or 'no answer'}); is the tiled "
                                 "server running, and the URI right?") from exc
    if health.status_code >= 500:
        raise CatalogUnavailable(f"the catalog at {uri} is not ready (healthz answered "
                                 f"HTTP {health.status_code})")
    headers = {"Authorization": f"Apikey {api_key}"} if api_key else {}
    try:
        answer = httpx.get(f"{base}/api/v1/metadata/", headers=headers, timeout=timeout,
                           follow_redirects=True)
    except httpx.HTTPError as exc:
        raise CatalogUnavailable(f"the catalog at {uri} stopped answering "
                                 f"({type(exc).__name__}: {exc})") from exc
    if answer.status_code in (401, 403):
        given = ("no API key was given (pass --api-key or set TILED_API_KEY)" if not api_key
                 else f"HTTP {answer.status_code}")
        raise CatalogUnavailable(f"the catalog at {uri} refused the API key: {given}")


def connect(uri: str, api_key: str | None = None, timeout: float = 5.0):
    """A tiled client root for ``uri`` (``http://host:port``), with ``api_key``.

    The key defaults to the ``TILED_API_KEY`` environment variable. The server is probed
    first (``timeout`` seconds per request), so an unreachable server or a refused key is
    reported at once instead of after tiled's retries.

    Raises
    ------
    CatalogUnavailable
        One sentence: unreachable, refused key, or the error tiled raised.
    """
    from tiled.client import from_uri

    api_key = api_key or os.environ.get("TILED_API_KEY")
    _probe_catalog(uri, api_key, timeout)
    try:
        return from_uri(uri, api_key=api_key)
    except Exception as exc:  # httpx errors, auth errors: say which catalog failed
        message = " ".join(str(exc).split()) or type(exc).__name__
        raise CatalogUnavailable(f"cannot open the tiled catalog at {uri}: {message}") from exc
