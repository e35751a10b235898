"""``labdct-live keys``: CURVE key pairs for the 0MQ proxy and its clients.

The layout the proxy, the worker and :func:`labdct_live.live.remote.make_publisher` read from a
CURVE folder (``--curve-dir``)::

    server.key           the proxy's public key: give it to every client
    server.key_secret    the proxy's key pair (mode 0600)
    clients/NAME.key     public keys of the publishers and workers the proxy admits
    client.key           a client's public key: give it to the proxy (``keys allow``)
    client.key_secret    a client's key pair (mode 0600)
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import shutil
from pathlib import Path

ORDER = 60

_BANNER = "#   ZeroMQ CURVE {kind} certificate, written by labdct-live keys on {now}\n"
_SECRET_NOTE = "#   Keep it on this host, mode 0600; give out the matching .key file only.\n"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def _write(path: Path, text: str, mode: int) -> None:
    # O_EXCL: never overwrite a key; the mode is set at creation, so a secret is never
    # readable by others, not even for an instant
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def write_key_pair(directory: str | os.PathLike, stem: str) -> tuple[Path, Path]:
    """Write ``STEM.key`` (public, 0644) and ``STEM.key_secret`` (0600) into ``directory``.

    The format is pyzmq's (:func:`zmq.auth.load_certificate` reads it).

    Parameters
    ----------
    directory : path-like
        Created (mode 0700) when missing.
    stem : str
        ``"server"`` or ``"client"``.

    Returns
    -------
    (Path, Path)
        The public and the secret key files.

    Raises
    ------
    FileExistsError
        When either file exists: keys are never overwritten.
    """
    import zmq

    directory = Path(directory).expanduser()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    public_file, secret_file = directory / f"{stem}.key", directory / f"{stem}.key_secret"
    for path in (public_file, secret_file):
        if path.exists():
            raise FileExistsError(f"{path} exists; keys are never overwritten (remove it first)")
    public, secret = (key.decode("ascii") for key in zmq.curve_keypair())
    now = datetime.datetime.now().isoformat(timespec="seconds")
    curve = f'metadata\ncurve\n    public-key = "{public}"\n'
    _write(secret_file, _BANNER.format(kind="secret", now=now) + _SECRET_NOTE + curve
           + f'    secret-key = "{secret}"\n', 0o600)
    _write(public_file, _BANNER.format(kind="public", now=now) + curve, 0o644)
    return public_file, secret_file


def allow_client(directory: str | os.PathLike, public_file: str | os.PathLike,
                 name: str | None = None) -> Path:
    """Copy a client's public key into ``DIR/clients/NAME.key``, admitting it to the proxy.

    Raises
    ------
    ValueError
        When ``public_file`` holds a secret key or no key, or ``name`` is not a plain name.
    FileExistsError
        When a client of that name is already admitted.
    """
    import zmq.auth

    public_file = Path(public_file).expanduser()
    name = name or public_file.stem
    if not _NAME.fullmatch(name):
        raise ValueError(f"client name {name!r}: letters, digits, '.', '_' and '-' only")
    if not public_file.is_file():
        raise FileNotFoundError(f"no public key file {public_file}")
    _, secret = zmq.auth.load_certificate(public_file)
    if secret is not None:
        raise ValueError(f"{public_file} holds a secret key: give the proxy the public .key "
                         "file only")
    clients = Path(directory).expanduser() / "clients"
    clients.mkdir(parents=True, exist_ok=True)
    target = clients / f"{name}.key"
    if target.exists():
        raise FileExistsError(f"{target} exists: choose another --name")
    shutil.copyfile(public_file, target)
    return target


def run(args: argparse.Namespace) -> int:
    directory = Path(args.directory).expanduser()
    if args.action == "allow":
        if args.public_key is None:
            raise ValueError("keys allow needs the client's public key file")
        target = allow_client(directory, args.public_key, args.name)
        print(f"admitted {target}; restart the proxy to load it")
        return 0
    if args.public_key is not None:
        raise ValueError(f"keys {args.action} takes no key file")
    public_file, secret_file = write_key_pair(directory, args.action)
    print(f"wrote {public_file} and {secret_file} (0600)")
    if args.action == "server":
        (directory / "clients").mkdir(exist_ok=True)
        print(f"next: copy {public_file} into each client's CURVE folder, and admit each "
              f"client with `labdct-live keys allow {directory} CLIENT.key --name HOST`")
    else:
        print(f"next: copy the proxy's server.key into {directory}, and admit {public_file} "
              "on the proxy host with `labdct-live keys allow DIR client.key --name HOST`")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "keys", help="create CURVE keys for the 0MQ proxy, publishers and workers",
        description="server DIR: the proxy's key pair and an empty clients/ folder. "
                    "client DIR: a publisher's or worker's key pair. allow DIR KEY: admit a "
                    "client's public key to the proxy. See docs/security.md.")
    p.add_argument("action", choices=["server", "client", "allow"])
    p.add_argument("directory", help="the CURVE folder (what --curve-dir points at)")
    p.add_argument("public_key", nargs="?", default=None,
                   help="allow: the client's public key file (client.key)")
    p.add_argument("--name", default=None,
                   help="allow: the name to admit it under (default: the file's stem)")
    p.set_defaults(func=run)
