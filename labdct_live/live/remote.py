"""Running the live processor in another process, fed over 0MQ.

The acquisition's RunEngine publishes documents (:class:`Publisher`) to a :class:`Proxy`, and
any number of workers subscribe to it (:class:`RemoteDispatcher`). Messages are framed like
bluesky's (``PREFIX NAME PAYLOAD``, separated by single spaces), so bluesky's own
``Publisher``/``RemoteDispatcher`` given :func:`pack`/:func:`unpack` interoperate with ours
when CURVE is off. Three choices differ from bluesky's defaults (see ``docs/security.md``):

- **Our own msgpack codec, never pickle** (:mod:`labdct_live.io.wire`): a document that does not
  decode is logged, counted and dropped; the worker carries on.
- **Loopback by default.** The proxy refuses to bind another interface unless CURVE is on or
  ``insecure=True`` says the network is trusted.
- **CURVE authentication** (:class:`CurveServer`, :class:`CurveClient`): the proxy is the CURVE
  server on both of its sockets and admits only client keys found in a folder.

PUB/SUB has no back-pressure and a subscriber that misses ``start`` cannot route the run:
start the worker before the scan, and let the detector publish frame *references*
(StreamResource/StreamDatum pointing at its HDF5 file), not pixels.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

import zmq
import zmq.auth
from zmq.utils.monitor import recv_monitor_message

from labdct_live.io.wire import WireDecodeError, pack, unpack
from labdct_live.live.addresses import (
    _LOG_EVERY,
    _LOG_EVERY_AFTER,
    DEFAULT_IN,
    DEFAULT_OUT,
    _attach,
    _check_bind,
    _client_curve,
    _server_curve,
    endpoint,
)

if TYPE_CHECKING:
    from labdct_live.live.addresses import CurveClient, CurveServer, PathLike

__all__ = [
    "Proxy",
    "Publisher",
    "RemoteDispatcher",
    "make_dispatcher",
    "make_proxy",
    "make_publisher",
]

logger = logging.getLogger(__name__)


class Publisher:
    """A RunEngine callback sending every document to a :class:`Proxy`: ``RE.subscribe`` it.

    A document that cannot be serialised is logged and dropped, never raised into the
    RunEngine (``counts["failed"]``).

    Parameters
    ----------
    address : str
        The proxy's input.
    prefix : bytes
        Tags this publisher's messages; workers listen to one prefix. No spaces.
    curve : CurveClient, optional
        CURVE keys; required when the proxy runs with CURVE.
    """

    def __init__(self, address: str = DEFAULT_IN, *, prefix: bytes = b"labdct",
                 curve: CurveClient | None = None):
        self._prefix = _check_prefix(prefix)
        self.address = endpoint(address)
        self.counts = {"sent": 0, "failed": 0}
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.PUB)
        self._socket.linger = 2000  # flush the last documents on close, but never hang
        try:
            if curve is not None:
                curve.apply(self._socket)
            _attach(self._socket, self.address, bind=False)
        except BaseException:
            self.close()
            raise

    def __call__(self, name: str, doc: dict) -> None:
        try:
            payload = pack(doc)
        except Exception as exc:  # noqa: BLE001 - whatever it is, never into the RunEngine
            self.counts["failed"] += 1
            logger.error("labdct-live: %s document not published: %s", name, exc)
            return
        self._socket.send(b" ".join([self._prefix, name.encode(), payload]))
        self.counts["sent"] += 1

    def close(self) -> None:
        """Close the socket (after sending what is queued, for 2 s at most; idempotent)."""
        if self._context.closed:
            return
        self._socket.close()
        self._context.term()


def _check_prefix(prefix: bytes) -> bytes:
    if not isinstance(prefix, bytes) or b" " in prefix:
        raise ValueError(f"prefix must be bytes without spaces, not {prefix!r}")
    return prefix


class Proxy:
    """Forwards every message from publishers (input) to workers (output).

    Both addresses are bound here. With ``curve`` the proxy is the CURVE server on both
    sockets and admits only the client keys in ``curve.clients_dir``.

    Parameters
    ----------
    in_address, out_address : str
        Where publishers connect and where workers subscribe (port ``*``: any free port;
        :attr:`in_address`/:attr:`out_address` then tell which).
    curve : CurveServer, optional
        CURVE settings; without them only loopback addresses are bound, unless ``insecure``.
    insecure : bool
        Allow binding a non-loopback interface without CURVE (a trusted network).

    Raises
    ------
    InsecureBindError
        Before binding anything, for a non-loopback address without CURVE nor ``insecure``.
    ValueError
        For an address that is malformed or cannot be bound (e.g. already in use).
    """

    def __init__(self, in_address: str = DEFAULT_IN, out_address: str = DEFAULT_OUT, *,
                 curve: CurveServer | None = None, insecure: bool = False):
        ends = endpoint(in_address), endpoint(out_address)
        for end in ends:
            _check_bind(end, curve, insecure)
        keys = curve.keys() if curve is not None else None
        self.closed = False
        self._auth = None
        self._sockets: list[zmq.Socket] = []
        self._context = zmq.Context()
        self._control_address = f"inproc://labdct-proxy-control-{id(self)}"
        try:
            if curve is not None:
                self._start_authenticator(curve)
            self._frontend, self.in_address = self._bind(zmq.SUB, ends[0], keys)
            self._frontend.subscribe(b"")
            self._backend, self.out_address = self._bind(zmq.PUB, ends[1], keys)
            self._control = self._context.socket(zmq.PAIR)
            self._sockets.append(self._control)
            self._control.bind(self._control_address)
        except BaseException:
            self.close()
            raise

    def _start_authenticator(self, curve: CurveServer) -> None:
        # one ZAP handler per context; it answers for both sockets
        from zmq.auth.thread import ThreadAuthenticator

        self._auth = ThreadAuthenticator(self._context, log=logging.getLogger(f"{__name__}.auth"))
        self._auth.start()
        self._auth.configure_curve(domain="*", location=str(curve.clients_dir))

    def _bind(self, kind: int, end: str, keys: tuple[bytes, bytes] | None):
        socket = self._context.socket(kind)
        self._sockets.append(socket)
        if keys is not None:
            socket.curve_server = True
            socket.curve_publickey, socket.curve_secretkey = keys
        return socket, _attach(socket, end, bind=True)

    def start(self) -> None:
        """Forward until :meth:`stop` (from another thread) or an interrupt; then close."""
        if self.closed:
            raise RuntimeError("this Proxy has been stopped; make a new one")
        try:
            zmq.proxy_steerable(self._frontend, self._backend, None, self._control)
        finally:
            self.close()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask a running :meth:`start` to return (thread-safe); waits up to ``timeout`` s.

        The control socket stays open until the proxy has closed: closing an inproc PAIR
        before its peer read the message can drop the message.
        """
        if self.closed:
            return
        socket = self._context.socket(zmq.PAIR)
        try:
            socket.connect(self._control_address)
            socket.send(b"TERMINATE")
            deadline = time.monotonic() + timeout
            while not self.closed and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            socket.close(linger=0)

    def close(self) -> None:
        """Close the sockets without forwarding (:meth:`start` does it on return)."""
        if self.closed:
            return
        self.closed = True
        for socket in self._sockets:
            socket.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        self._context.term()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({getattr(self, 'in_address', '?')!r} -> " \
               f"{getattr(self, 'out_address', '?')!r})"


def _document_names() -> dict:
    from bluesky.run_engine import DocumentNames

    return {name.encode(): DocumentNames[name] for name in DocumentNames.__members__}


class RemoteDispatcher:
    """Receives documents from a :class:`Proxy` and hands them to subscribed callbacks.

    A replacement for :class:`bluesky.callbacks.zmq.RemoteDispatcher` whose decoding cannot
    be turned against the receiver: a message that is not ``PREFIX NAME PAYLOAD`` with a
    known document name and a payload :func:`unpack` accepts is logged, counted in
    ``counts["rejected"]`` and dropped. A callback that raises is logged and counted
    (``counts["callback_errors"]``); the loop goes on in both cases.

    Parameters
    ----------
    address : str
        The proxy's output.
    prefix : bytes
        Only messages with this prefix are received (all when empty).
    curve : CurveClient, optional
        CURVE keys; required when the proxy runs with CURVE.
    poll_interval : float
        Seconds between checks for :meth:`stop`.
    """

    def __init__(self, address: str = DEFAULT_OUT, *, prefix: bytes = b"labdct",
                 curve: CurveClient | None = None, poll_interval: float = 0.2):
        from bluesky.run_engine import Dispatcher  # here: `labdct-live --help` stays fast

        self._dispatcher = Dispatcher()
        self._prefix = _check_prefix(prefix)
        self.address = endpoint(address)
        self.counts = {"accepted": 0, "rejected": 0, "callback_errors": 0}
        self._names = _document_names()
        self._poll_ms = int(poll_interval * 1000)
        self._stopping = threading.Event()
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.SUB)
        self._monitor = None
        try:
            if curve is not None:
                curve.apply(self._socket)
                self._monitor = self._socket.get_monitor_socket(_HANDSHAKE_EVENTS)
            _attach(self._socket, self.address, bind=False)
            # filter at the source; the trailing space keeps b"labdct" from matching b"labdct2"
            self._socket.subscribe(self._prefix + b" " if self._prefix else b"")
        except BaseException:
            self.close()
            raise
        self._handshake_ok: bool | None = None

    def subscribe(self, func, name: str = "all") -> int:
        """Call ``func(name, doc)`` for every document (or only those named ``name``)."""
        return self._dispatcher.subscribe(func, name)

    def unsubscribe(self, token: int) -> None:
        """Undo a :meth:`subscribe`."""
        self._dispatcher.unsubscribe(token)

    # -------------------------------------------------------------------------- messages
    def handle(self, message: bytes) -> bool:
        """Decode one message and dispatch it; ``False`` when it was rejected.

        Parameters
        ----------
        message : bytes
            ``PREFIX NAME PAYLOAD`` as a :class:`Publisher` sends it.
        """
        try:
            name, doc = self._decode(message)
        except WireDecodeError as exc:
            self._reject(message, exc)
            return False
        self.counts["accepted"] += 1
        try:
            self._dispatcher.process(name, doc)
        except Exception:
            self.counts["callback_errors"] += 1
            logger.exception("labdct-live: a callback failed on a %s document", name.name)
        return True

    def _decode(self, message: bytes):
        parts = message.split(b" ", 2)
        if len(parts) != 3:
            raise WireDecodeError("not a 'PREFIX NAME PAYLOAD' message")
        prefix, name, payload = parts
        if self._prefix and prefix != self._prefix:
            raise WireDecodeError(f"prefix {prefix[:40]!r} is not {self._prefix!r}")
        kind = self._names.get(name)
        if kind is None:
            raise WireDecodeError(f"unknown document name {name[:40]!r}")
        return kind, unpack(payload)

    def _reject(self, message: bytes, exc: WireDecodeError) -> None:
        self.counts["rejected"] += 1
        n = self.counts["rejected"]
        if n <= _LOG_EVERY_AFTER or n % _LOG_EVERY == 0:
            name = message.split(b" ", 2)[1][:40] if message.count(b" ") >= 2 else b"?"
            logger.warning("labdct-live: rejected a %r message from %s: %s (%d rejected so "
                           "far)", name.decode("ascii", "replace"), self.address, exc, n)

    # ------------------------------------------------------------------------------ loop
    def start(self) -> None:
        """Receive and dispatch until :meth:`stop` or an interrupt; then close the socket."""
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        if self._monitor is not None:
            poller.register(self._monitor, zmq.POLLIN)
        try:
            while not self._stopping.is_set():
                for socket, _ in poller.poll(self._poll_ms):
                    if socket is self._socket:
                        self.handle(self._socket.recv())
                    else:
                        self._log_handshake(recv_monitor_message(self._monitor))
        finally:
            self.close()

    def stop(self) -> None:
        """Make :meth:`start` return within ``poll_interval`` (thread- and signal-safe)."""
        self._stopping.set()

    def _log_handshake(self, event: dict) -> None:
        # log changes only: a refused client retries several times a second
        ok = event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED
        if ok != self._handshake_ok:
            self._handshake_ok = ok
            if ok:
                logger.info("labdct-live: CURVE handshake with %s succeeded", self.address)
            else:
                logger.warning("labdct-live: CURVE handshake with %s failed (is this key in the "
                               "proxy's clients folder, and server.key the proxy's?)",
                               self.address)

    def close(self) -> None:
        """Close the socket; :meth:`start` does it on return (idempotent)."""
        if self._context.closed:
            return
        if self._monitor is not None:
            self._socket.disable_monitor()
            self._monitor.close(linger=0)
        self._socket.close(linger=0)
        self._context.term()


_HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                     | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def make_publisher(address: str = DEFAULT_IN, prefix: bytes = b"labdct", *,
                   curve: CurveClient | PathLike | None = None) -> Publisher:
    """A :class:`Publisher`: ``RE.subscribe`` it.

    ``curve`` is a :class:`CurveClient` or a folder holding ``client.key_secret`` and
    ``server.key``.
    """
    return Publisher(address, prefix=prefix, curve=_client_curve(curve))


def make_proxy(in_address: str = DEFAULT_IN, out_address: str = DEFAULT_OUT, *,
               curve: CurveServer | PathLike | None = None, insecure: bool = False) -> Proxy:
    """A :class:`Proxy`; call ``.start()`` (blocks) to run it.

    ``curve`` is a :class:`CurveServer` or a folder holding ``server.key_secret`` and
    ``clients/``.
    """
    return Proxy(in_address, out_address, curve=_server_curve(curve), insecure=insecure)


def make_dispatcher(address: str = DEFAULT_OUT, prefix: bytes = b"labdct", *,
                    curve: CurveClient | PathLike | None = None) -> RemoteDispatcher:
    """A :class:`RemoteDispatcher`; subscribe callbacks, then ``.start()`` (blocks until
    stopped or interrupted)."""
    return RemoteDispatcher(address, prefix=prefix, curve=_client_curve(curve))
