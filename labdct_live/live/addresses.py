"""0MQ addresses and CURVE keys: loopback unless authenticated, keys read from a folder."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

__all__ = [
    "CURVE_DIR_ENV",
    "DEFAULT_IN",
    "DEFAULT_OUT",
    "CurveClient",
    "CurveServer",
    "InsecureBindError",
    "endpoint",
    "is_loopback",
]

logger = logging.getLogger(__name__)


#: Where publishers connect (the proxy's input) and workers subscribe (its output).
DEFAULT_IN = "127.0.0.1:5577"

DEFAULT_OUT = "127.0.0.1:5578"

#: Environment variable the command line reads when ``--curve-dir`` is not given.
CURVE_DIR_ENV = "LABDCT_CURVE_DIR"

#: File names inside a CURVE folder (``labdct-live keys`` writes them).
SERVER_SECRET = "server.key_secret"

SERVER_PUBLIC = "server.key"

CLIENT_SECRET = "client.key_secret"

CLIENT_PUBLIC = "client.key"

CLIENTS_DIR = "clients"

PathLike = str | os.PathLike

_TCP = re.compile(r"(?:tcp://)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:/\[\]]+):(?P<port>\d+|\*)")


# the first rejections are logged one by one; a flood is summarised
_LOG_EVERY_AFTER = 20

_LOG_EVERY = 1000


class InsecureBindError(ValueError):
    """A bind to a non-loopback interface without CURVE, and without ``insecure=True``."""


def endpoint(address: str | tuple[str, int]) -> str:
    """The 0MQ endpoint of ``address``: ``HOST:PORT``, ``tcp://HOST:PORT`` or ``ipc://PATH``.

    Parameters
    ----------
    address : str or (str, int)
        ``PORT`` may be ``*`` (any free port) when binding; IPv6 hosts go in brackets.

    Returns
    -------
    str
        ``tcp://HOST:PORT`` or ``ipc://PATH``.

    Raises
    ------
    ValueError
        When ``address`` has none of these forms.
    """
    if isinstance(address, tuple):
        address = ":".join(str(part) for part in address)
    address = str(address).strip()
    if address.startswith("ipc://") and len(address) > len("ipc://"):
        return address
    match = _TCP.fullmatch(address)
    if match is None or (match["port"] != "*" and int(match["port"]) > 65535):
        raise ValueError(f"not a 0MQ address: {address!r} (expected HOST:PORT, "
                         "tcp://HOST:PORT or ipc://PATH)")
    return f"tcp://{match['host']}:{match['port']}"


def _host(endpoint_: str) -> str:
    return endpoint_[len("tcp://"):].rsplit(":", 1)[0].strip("[]")


def is_loopback(endpoint_: str) -> bool:
    """Whether only this host can reach ``endpoint_`` (127.0.0.0/8, ::1, localhost, ipc)."""
    if endpoint_.startswith("ipc://"):
        return True
    host = _host(endpoint_)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # '*', an interface or a host name: whatever it resolves to, not sure
        return False


def _check_bind(endpoint_: str, curve: CurveServer | None, insecure: bool) -> None:
    if curve is None and not insecure and not is_loopback(endpoint_):
        raise InsecureBindError(
            f"refusing to bind {endpoint_} without CURVE authentication: anyone on that "
            "network could feed or read the stream. Give a CURVE folder (--curve-dir, see "
            "docs/security.md) or, on a trusted network only, --insecure")


def _attach(socket: zmq.Socket, endpoint_: str, bind: bool) -> str:
    """Bind or connect, turning 0MQ's errors into one readable :class:`ValueError`."""
    if endpoint_.startswith("tcp://") and ":" in _host(endpoint_):
        socket.ipv6 = True
    try:
        if bind:
            socket.bind(endpoint_)
        else:
            socket.connect(endpoint_)
    except zmq.ZMQError as exc:
        raise ValueError(f"cannot {'bind' if bind else 'connect to'} {endpoint_}: "
                         f"{exc.strerror}") from None
    return socket.last_endpoint.decode()


def _load_keys(path: Path, need_secret: bool) -> tuple[bytes, bytes | None]:
    if not path.is_file():
        raise FileNotFoundError(f"no CURVE key file {path} (create it with `labdct-live keys`)")
    try:
        public, secret = zmq.auth.load_certificate(path)
    except ValueError as exc:
        raise ValueError(f"{path} is not a CURVE key file: {exc}") from None
    if need_secret:
        if secret is None:
            raise ValueError(f"{path} holds no secret key")
        if path.stat().st_mode & 0o077:
            logger.warning("%s is readable by other users: chmod 600 it", path)
    return public, secret


@dataclass(frozen=True)
class CurveServer:
    """The proxy's CURVE settings.

    Parameters
    ----------
    secret_file : path
        The proxy's key pair (``server.key_secret``).
    clients_dir : path
        Folder of the public keys (``*.key``) of every publisher and worker admitted; read
        when the proxy starts.
    """

    secret_file: Path
    clients_dir: Path

    @classmethod
    def from_dir(cls, directory: PathLike) -> CurveServer:
        """``DIR/server.key_secret`` and ``DIR/clients/``, as ``labdct-live keys server`` makes."""
        directory = Path(directory).expanduser()
        return cls(directory / SERVER_SECRET, directory / CLIENTS_DIR)

    def keys(self) -> tuple[bytes, bytes]:
        """(public, secret) of the proxy; checks that some client key is authorised."""
        if not self.clients_dir.is_dir():
            raise FileNotFoundError(f"no folder of authorised client keys {self.clients_dir}")
        if not any(self.clients_dir.glob("*.key")):
            raise ValueError(f"no authorised client keys (*.key) in {self.clients_dir}: no "
                             "publisher or worker could connect (see `labdct-live keys allow`)")
        return _load_keys(Path(self.secret_file), need_secret=True)


@dataclass(frozen=True)
class CurveClient:
    """A publisher's or worker's CURVE settings.

    Parameters
    ----------
    secret_file : path
        This client's key pair (``client.key_secret``); its public half must be in the
        proxy's ``clients`` folder.
    server_public_file : path
        The proxy's public key (``server.key``).
    """

    secret_file: Path
    server_public_file: Path

    @classmethod
    def from_dir(cls, directory: PathLike) -> CurveClient:
        """``DIR/client.key_secret`` and ``DIR/server.key``."""
        directory = Path(directory).expanduser()
        return cls(directory / CLIENT_SECRET, directory / SERVER_PUBLIC)

    def apply(self, socket: zmq.Socket) -> None:
        """Make ``socket`` a CURVE client of the proxy (before it connects)."""
        public, secret = _load_keys(Path(self.secret_file), need_secret=True)
        server_public, _ = _load_keys(Path(self.server_public_file), need_secret=False)
        socket.curve_publickey = public
        socket.curve_secretkey = secret
        socket.curve_serverkey = server_public


def _server_curve(curve: CurveServer | PathLike | None) -> CurveServer | None:
    return curve if curve is None or isinstance(curve, CurveServer) else CurveServer.from_dir(curve)


def _client_curve(curve: CurveClient | PathLike | None) -> CurveClient | None:
    return curve if curve is None or isinstance(curve, CurveClient) else CurveClient.from_dir(curve)
