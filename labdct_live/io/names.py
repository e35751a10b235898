"""Names taken from documents, checked before they become a path or a catalog key.

A run's uid, a processed node's key and an export folder's name arrive in bluesky documents,
possibly over the network. Used unchecked, ``uid = "../../x"`` writes outside the spool and
into another catalog node. Every such name passes :func:`safe_key` (documents: a bad name is
replaced by a digest of it, so the run is still processed and nothing is lost) or
:func:`check_key` (a user's argument: a bad name is an error).
"""

from __future__ import annotations

import hashlib
import logging
import re

__all__ = ["KEY_PATTERN", "is_safe_key", "check_key", "safe_key"]

logger = logging.getLogger(__name__)

#: One path component and one tiled key: letters, digits, ``.``, ``_``, ``-``; starting with a
#: letter or digit (no ``..``, no hidden files, no separators), at most 128 characters. A
#: bluesky uid (a UUID) matches.
KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def is_safe_key(name: object) -> bool:
    """True when ``name`` is a str matching :data:`KEY_PATTERN` without ``..``.

    Examples
    --------
    >>> is_safe_key("a5de6950-1c2b-4f0e-9d7a-0123456789ab"), is_safe_key("../victim")
    (True, False)
    """
    return (isinstance(name, str) and KEY_PATTERN.fullmatch(name) is not None
            and ".." not in name)


def check_key(name: object, what: str = "name") -> str:
    """``name`` when it is safe (:func:`is_safe_key`); otherwise a ``ValueError`` naming it."""
    if not is_safe_key(name):
        raise ValueError(f"{what} {name!r} is not a safe name: use letters, digits, '.', '_' "
                         "and '-' (at most 128, starting with a letter or digit, no '..')")
    return name


def safe_key(name: object, what: str = "name") -> str:
    """``name`` when it is safe, else ``"unsafe-<16 hex digits of its SHA-256>"``, logged.

    The digest is stable, so every document of a run maps to the same folder and key.

    Examples
    --------
    >>> safe_key("0123abcd")
    '0123abcd'
    >>> safe_key("../../etc")[:7]
    'unsafe-'
    """
    if is_safe_key(name):
        return name
    digest = hashlib.sha256(repr(name).encode()).hexdigest()[:16]
    replacement = f"unsafe-{digest}"
    logger.warning("%s %r is not a safe name for a folder or catalog key; using %r instead",
                   what, name, replacement)
    return replacement
