"""Running the live processor in another process, fed over 0MQ.

Bluesky's 0MQ trio: the acquisition's RunEngine publishes documents (:class:`Publisher`) to a
:class:`Proxy`, and any number of workers subscribe to it (:class:`RemoteDispatcher`). Two
choices differ from bluesky's defaults:

- **msgpack + msgpack-numpy, never pickle.** Unpickling runs arbitrary code, so with pickle
  anyone who can reach the port can run code in the worker. msgpack carries only data (and is
  faster).
- **localhost by default.** Bind to another interface only on a trusted network.

PUB/SUB has no back-pressure and a subscriber that misses ``start`` cannot route the run:
start the worker before the scan, and let the detector publish frame *references*
(StreamResource/StreamDatum pointing at its HDF5 file), not pixels.
"""

from __future__ import annotations

import logging

import msgpack
import msgpack_numpy

__all__ = ["pack", "unpack", "make_publisher", "make_proxy", "make_dispatcher",
           "DEFAULT_IN", "DEFAULT_OUT"]

logger = logging.getLogger(__name__)

#: Where publishers connect (the proxy's input) and workers subscribe (its output).
DEFAULT_IN = "127.0.0.1:5577"
DEFAULT_OUT = "127.0.0.1:5578"


def pack(doc: dict) -> bytes:
    """Serialise a document with msgpack (numpy arrays via msgpack-numpy)."""
    return msgpack.packb(doc, default=msgpack_numpy.encode, use_bin_type=True)


def unpack(data: bytes) -> dict:
    """Inverse of :func:`pack`; never executes code from the wire."""
    return msgpack.unpackb(data, object_hook=msgpack_numpy.decode, raw=False,
                           strict_map_key=False)


def make_publisher(address: str = DEFAULT_IN, prefix: bytes = b"labdct"):
    """A bluesky :class:`~bluesky.callbacks.zmq.Publisher` using msgpack: ``RE.subscribe`` it."""
    from bluesky.callbacks.zmq import Publisher

    return Publisher(address, prefix=prefix, serializer=pack)


def make_proxy(in_address: str = DEFAULT_IN, out_address: str = DEFAULT_OUT):
    """A bluesky :class:`~bluesky.callbacks.zmq.Proxy`; call ``.start()`` (blocks) to run it."""
    from bluesky.callbacks.zmq import Proxy

    return Proxy(in_address, out_address)


def make_dispatcher(address: str = DEFAULT_OUT, prefix: bytes = b"labdct"):
    """A :class:`~bluesky.callbacks.zmq.RemoteDispatcher` decoding msgpack; subscribe
    callbacks, then ``.start()`` (blocks until stopped or interrupted)."""
    from bluesky.callbacks.zmq import RemoteDispatcher

    return RemoteDispatcher(address, prefix=prefix, deserializer=unpack)
