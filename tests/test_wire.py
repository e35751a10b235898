"""The 0MQ wire: the msgpack codec, forged documents against a real worker, CURVE, addresses."""

from __future__ import annotations

import os
import pickle
import re
import select
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from processes import end_processes

from labdct_live.cli import main
from labdct_live.cli.keys import allow_client, write_key_pair
from labdct_live.io.wire import ARRAY_EXT, SCALAR_EXT, WireDecodeError, pack, unpack
from labdct_live.live.addresses import CurveClient, CurveServer, InsecureBindError
from labdct_live.live.remote import Proxy, RemoteDispatcher, make_publisher

CLI = [sys.executable, "-m", "labdct_live"]
NUMERIC = ["b1", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8", "c8", "c16"]


# ---------------------------------------------------------------------------------- codec
def _dtypes():
    for code in NUMERIC:
        if np.dtype(code).itemsize == 1:
            yield np.dtype("|" + code)
        else:
            yield from (np.dtype("<" + code), np.dtype(">" + code))


@pytest.mark.parametrize("dtype", list(_dtypes()), ids=lambda d: d.str)
@pytest.mark.parametrize("shape", [(), (0,), (3, 0), (7,), (2, 3, 4)], ids=str)
def test_arrays_of_every_numeric_dtype_and_byte_order_round_trip(dtype, shape):
    rng = np.random.default_rng(0)
    array = np.asarray(rng.random(shape) * 100).astype(dtype)
    back = unpack(pack({"a": array}))["a"]
    assert isinstance(back, np.ndarray)
    assert back.dtype.str == array.dtype.str and back.shape == array.shape
    assert np.array_equal(back, array) and back.flags.writeable


def test_big_and_strided_arrays_and_scalars_round_trip():
    big = np.arange(2048 * 2048, dtype="<u2").reshape(2048, 2048)
    doc = {"big": big, "strided": big[::3, 1::5], "f": np.float32(2.5), "i": np.int64(-3),
           "u": np.uint8(255), "b": np.bool_(True), "c": np.complex64(1 - 2j), "z": 1 + 2j,
           "nested": [{"x": np.zeros((2, 2), ">f8")}], "text": np.array(["a", "bc"])}
    back = unpack(pack(doc))
    assert np.array_equal(back["big"], big) and np.array_equal(back["strided"], big[::3, 1::5])
    for key in "fiubc":
        assert type(back[key]) is type(doc[key]) and back[key] == doc[key]
    assert back["z"] == 1 + 2j and back["text"] == ["a", "bc"]
    assert back["nested"][0]["x"].dtype.str == ">f8"


@pytest.mark.parametrize("value", [np.array([object()], dtype=object),
                                   np.array(["2020-01-01"], dtype="datetime64[D]"), object()])
def test_values_that_do_not_travel_are_refused_when_sending(value):
    with pytest.raises(TypeError):
        pack({"x": value})


def _ext_doc(dtype: str, shape, data: bytes, code: int = ARRAY_EXT) -> bytes:
    fields = [dtype, shape, data] if code == ARRAY_EXT else [dtype, data]
    ext = msgpack.ExtType(code, msgpack.packb(fields, use_bin_type=True))
    return msgpack.packb({"uid": "u", "x": ext}, use_bin_type=True)


def _raw_ext(code: int, payload: bytes) -> bytes:
    return msgpack.packb({"x": msgpack.ExtType(code, payload)}, use_bin_type=True)


class _Exploit:
    """Unpickling this runs a shell command: what a forged object array carries."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def _msgpack_numpy_object_doc(command: str) -> bytes:
    """A start document as msgpack-numpy encodes an object array: its decoder unpickles it."""
    marker = {b"nd": True, b"type": "|O", b"kind": b"O", b"shape": [1],
              b"data": pickle.dumps(_Exploit(command))}
    return msgpack.packb({"uid": "forged", "time": 0.0, "scan_id": 1, "plan": marker},
                         use_bin_type=True)


@pytest.mark.parametrize("payload, reason", [
    (_ext_doc("|O", [1], pickle.dumps(_Exploit("true"))), "dtype '|O' refused"),
    (_ext_doc("|O", None, pickle.dumps(_Exploit("true")), SCALAR_EXT), "dtype '|O' refused"),
    (_ext_doc("<U4", [1], b"a\0\0\0b\0\0\0c\0\0\0d\0\0\0"), "dtype '<U4' refused"),
    (_ext_doc("|S3", [1], b"abc"), "dtype '|S3' refused"),
    (_ext_doc("|V12", [1], bytes(12)), "dtype '|V12' refused"),
    (_ext_doc("[('a', '<i4'), ('b', '<f8')]", [1], bytes(12)), "refused"),
    (_ext_doc("<M8[ns]", [1], bytes(8)), "refused"),
    (_ext_doc("=f8", [1], bytes(8)), "explicit byte order"),
    (_ext_doc("|f8", [1], bytes(8)), "numpy spells it '<f8'"),
    (_ext_doc("<u1", [1], bytes(1)), "numpy spells it '|u1'"),
    (_ext_doc("<f8", [3], bytes(16)), "16 bytes for a <f8 array of shape (3,): 24 expected"),
    (_ext_doc("<f8", [2], bytes(24)), "24 bytes for a <f8 array of shape (2,): 16 expected"),
    (_ext_doc("<f8", [-1, 2], bytes(16)), "non-negative"),
    (_ext_doc("<f8", [True], bytes(8)), "non-negative"),
    (_ext_doc("<f8", [1.0], bytes(8)), "non-negative"),
    (_ext_doc("<f8", [1] * 33, bytes(8)), "at most 32"),
    (_ext_doc("<f8", 1, bytes(8)), "shape refused"),
    (_ext_doc("<f8", None, b"", SCALAR_EXT), "0 bytes for a <f8 array of shape (): 8"),
    (_raw_ext(ARRAY_EXT, msgpack.packb({"dtype": "<f8"})), "expected 3 fields"),
    (_raw_ext(ARRAY_EXT, msgpack.packb([8, [1], "<f8"])), "a dtype string and bytes"),
    (_raw_ext(SCALAR_EXT, b"\xc1"), "malformed numpy extension"),
    (_raw_ext(ARRAY_EXT, msgpack.packb(["<f8", [1], msgpack.ExtType(ARRAY_EXT, b"")])),
     "nested extension"),
    (_ext_doc("<f8", [1], bytes(8), code=5), "unknown msgpack extension type 5"),
    (_msgpack_numpy_object_doc("true"), "msgpack-numpy array marker"),
    (msgpack.packb([1, 2]), "a document is a map"),
    (b"\xc1 not msgpack", "not a msgpack document"),
    (msgpack.packb({"a": 1}) + b"extra", "not a msgpack document"),
], ids=lambda value: value if isinstance(value, str) else "")
def test_each_forbidden_payload_is_refused_with_a_wire_decode_error(payload, reason):
    with pytest.raises(WireDecodeError, match=re.escape(reason)):
        unpack(payload)


def test_a_refused_object_array_never_reaches_pickle(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("pickle.loads called")

    monkeypatch.setattr(pickle, "loads", forbidden)
    for payload in (_msgpack_numpy_object_doc("true"),
                    _ext_doc("|O", [1], pickle.dumps(_Exploit("true")))):
        with pytest.raises(WireDecodeError):
            unpack(payload)


def test_the_dispatcher_drops_and_counts_bad_messages_and_survives_callbacks(caplog):
    seen = []
    dispatcher = RemoteDispatcher("127.0.0.1:1")  # never started: handle() only

    def callback(name, doc):
        seen.append((name, doc))
        if doc.get("boom"):
            raise RuntimeError("a callback bug")

    dispatcher.subscribe(callback)
    try:
        good = pack({"uid": "good", "time": 1.0})
        bad = [b"labdct start", b"labdct nonsense " + good, b"other start " + good,
               b"labdct start " + _msgpack_numpy_object_doc("true"),
               b"labdct start " + _ext_doc("|O", [1], b"x")]
        assert [dispatcher.handle(m) for m in bad] == [False] * len(bad)
        assert dispatcher.handle(b"labdct start " + good)
        assert dispatcher.handle(b"labdct stop " + pack({"boom": True}))
    finally:
        dispatcher.close()
    assert seen == [("start", {"uid": "good", "time": 1.0}), ("stop", {"boom": True})]
    assert dispatcher.counts == {"accepted": 2, "rejected": 5, "callback_errors": 1}
    assert "rejected a 'start' message" in caplog.text and "(5 rejected so far)" in caplog.text


# ------------------------------------------------------------------------------ processes
def _clean_env() -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("LABDCT_CURVE_DIR", None)
    return env


def _banner(process: subprocess.Popen, banner: str, timeout: float = 60) -> str:
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, f"no '{banner}' line within {timeout} s"
    line = process.stdout.readline()
    assert banner in line, line
    return line


def _start_proxy(*options: str, env: dict) -> tuple[subprocess.Popen, str, str]:
    """A ``labdct-live proxy`` on free loopback ports, and the two addresses it bound."""
    proxy = subprocess.Popen([*CLI, "proxy", "--input", "127.0.0.1:*", "--output",
                              "127.0.0.1:*", *options], env=env, stdout=subprocess.PIPE,
                             text=True)
    line = _banner(proxy, "labdct-live proxy")
    found = re.search(r"(tcp://\S+) -> (tcp://\S+)", line)
    return proxy, found[1], found[2]


def _wait_for(predicate, timeout: float, every: float = 0.1, action=None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if action is not None:
            action()
        if predicate():
            return True
        time.sleep(every)
    return predicate()


def test_forged_pickle_documents_run_nothing_and_the_worker_carries_on(tmp_path):
    from labdct_live.catalog.server import CatalogServer

    pwned = tmp_path / "pwned"
    command = f"id > {pwned}"
    log = tmp_path / "worker.log"
    env = _clean_env()
    with CatalogServer(tmp_path / "catalog") as server, open(log, "w") as stderr:
        env["TILED_API_KEY"] = server.api_key
        proxy, p_in, p_out = _start_proxy(env=env)
        worker = subprocess.Popen([*CLI, "worker", "--zmq", p_out, "--catalog", server.uri,
                                   "--method", "routine", "--spool", str(tmp_path / "spool")],
                                  env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
        context = zmq.Context()
        attacker = context.socket(zmq.PUB)
        try:
            _banner(worker, "labdct-live worker")
            attacker.connect(p_in)
            # (a) msgpack-numpy's object array: its decoder would pickle.loads the payload.
            # PUB/SUB drops messages sent before the path is up: send until the worker answers
            forged = b"labdct start " + _msgpack_numpy_object_doc(command)
            assert _wait_for(lambda: "rejected" in log.read_text() or pwned.exists(), 30,
                             every=0.3, action=lambda: attacker.send(forged))
            time.sleep(0.5)  # copies still in flight arrive
            assert not pwned.exists(), "the forged document ran a command in the worker"
            n_before = log.read_text().count("msgpack-numpy array marker")
            assert n_before >= 1
            assert log.read_text().count("rejected a 'start' message") == n_before
            # (b) the same pickle in our own extension, claiming dtype '|O'
            attacker.send(b"labdct start " + _ext_doc("|O", [1], pickle.dumps(_Exploit(command))))
            assert _wait_for(lambda: "dtype '|O' refused" in log.read_text(), 10)
            assert not pwned.exists() and worker.poll() is None
            assert f"({n_before + 1} rejected so far)" in log.read_text()
            # a real document still gets through, after the bad ones
            attacker.send(b"labdct start " + pack({"uid": "after-the-attack", "time": time.time(),
                                                    "scan_id": 2, "num_points": 0}))
            assert _wait_for(lambda: "run after-the-attack started" in log.read_text(), 10)
            assert re.search(rf"1 documents accepted, {n_before + 1} rejected so far",
                             log.read_text())
            assert worker.poll() is None and proxy.poll() is None
        finally:
            attacker.close(linger=0)
            context.term()
            end_processes(worker, proxy)
        summary = worker.stdout.read()
    assert f"1 documents accepted, {n_before + 1} rejected" in summary
    assert not pwned.exists()


def _keys(root: Path) -> tuple[Path, CurveClient, CurveClient]:
    """A proxy folder admitting one client, that client's folder, and an unknown client's."""
    server_dir, good_dir, rogue_dir = root / "proxy", root / "good", root / "rogue"
    server_public, _ = write_key_pair(server_dir, "server")
    for folder in (good_dir, rogue_dir):
        write_key_pair(folder, "client")
        (folder / "server.key").write_bytes(server_public.read_bytes())
    allow_client(server_dir, good_dir / "client.key", name="beamline-pc")
    return server_dir, CurveClient.from_dir(good_dir), CurveClient.from_dir(rogue_dir)


class _Collector:
    """A dispatcher in a thread, collecting the uids of the start documents it receives."""

    def __init__(self, address: str, curve: CurveClient | None):
        self.uids: list[str] = []
        self.dispatcher = RemoteDispatcher(address, curve=curve, poll_interval=0.05)
        self.dispatcher.subscribe(lambda name, doc: self.uids.append(doc["uid"]), "start")
        self.thread = threading.Thread(target=self.dispatcher.start, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.dispatcher.stop()
        self.thread.join(10)


def test_with_curve_only_admitted_keys_publish_or_subscribe(tmp_path):
    server_dir, good, rogue = _keys(tmp_path)
    proxy, p_in, p_out = _start_proxy("--curve-dir", str(server_dir), env=_clean_env())
    collectors = {"good": _Collector(p_out, good), "plain": _Collector(p_out, None),
                  "rogue": _Collector(p_out, rogue)}
    publishers = {"good": make_publisher(p_in, curve=good), "plain": make_publisher(p_in),
                  "rogue": make_publisher(p_in, curve=rogue.secret_file.parent)}
    try:
        def send_round():
            for who, publisher in publishers.items():
                publisher("start", {"uid": who, "time": time.time()})

        assert _wait_for(lambda: "good" in collectors["good"].uids, 20, every=0.2,
                         action=send_round)
        for _ in range(5):  # the refused peers had every chance to get through
            send_round()
            time.sleep(0.1)
        assert proxy.poll() is None
    finally:
        for publisher in publishers.values():
            publisher.close()
        for collector in collectors.values():
            collector.close()
        end_processes(proxy)
    assert set(collectors["good"].uids) == {"good"}
    assert collectors["plain"].uids == [] and collectors["rogue"].uids == []


def test_bluesky_framing_passes_through_our_proxy(tmp_path):
    from bluesky.callbacks.zmq import Publisher as BlueskyPublisher

    proxy = Proxy("127.0.0.1:*", "127.0.0.1:*")
    thread = threading.Thread(target=proxy.start, daemon=True)
    thread.start()
    collector = _Collector(proxy.out_address, None)
    publisher = BlueskyPublisher(proxy.in_address, prefix=b"labdct", serializer=pack)
    try:
        assert _wait_for(lambda: "bluesky" in collector.uids, 20, every=0.2,
                         action=lambda: publisher("start", {"uid": "bluesky", "time": 0.0}))
    finally:
        publisher.close()
        collector.close()
        proxy.stop()
        thread.join(10)
    assert not thread.is_alive() and proxy.closed


# ------------------------------------------------------------------------------ addresses
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("side", ["--input", "--output"])
def test_a_non_loopback_bind_without_curve_is_refused_before_binding(side, capsys):
    port = _free_port()
    assert main(["proxy", side, f"0.0.0.0:{port}"]) != 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("labdct-live proxy: error: refusing to bind tcp://0.0.0.0:")
    assert "--insecure" in err and len(err.splitlines()) == 1
    with socket.socket() as s:  # nothing was bound, not even the loopback side
        s.bind(("0.0.0.0", port))
    with pytest.raises(InsecureBindError):
        Proxy("127.0.0.1:*", "[::]:*")
    Proxy("0.0.0.0:*", "127.0.0.1:*", insecure=True).close()


def test_a_taken_port_or_a_bad_address_gives_one_clear_line(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["proxy", "--input", f"127.0.0.1:{port}", "--output", "127.0.0.1:*"]) != 0
        err = capsys.readouterr().err
        assert err.startswith(f"labdct-live proxy: error: cannot bind tcp://127.0.0.1:{port}")
        assert "Address already in use" in err and len(err.splitlines()) == 1
    for argv in (["proxy", "--input", "nonsense"], ["proxy", "--output", "127.0.0.1:70000"],
                 ["worker", "--zmq", "nonsense", "--catalog", "http://127.0.0.1:1"],
                 ["worker", "--catalog", "http://127.0.0.1:1", "--curve-dir", "/nonexistent"]):
        assert main(argv) != 0
        err = capsys.readouterr().err
        assert err.startswith(f"labdct-live {argv[0]}: error: ") and len(err.splitlines()) == 1
    for size in ("0", "-3", "many"):
        with pytest.raises(SystemExit):
            main(["worker", "--catalog", "x", "--queue-size", size])
        assert "argument --queue-size" in capsys.readouterr().err


def test_the_command_line_gives_one_line_and_no_traceback():
    done = subprocess.run([*CLI, "proxy", "--input", "nonsense"], env=_clean_env(),
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.splitlines() == [("labdct-live proxy: error: not a 0MQ address: "
                                         "'nonsense' (expected HOST:PORT, tcp://HOST:PORT or "
                                         "ipc://PATH)")]


# ----------------------------------------------------------------------------------- keys
def test_keys_writes_private_secrets_and_admits_public_keys_only(tmp_path, capsys):
    proxy_dir, client_dir = tmp_path / "proxy", tmp_path / "client"
    assert main(["keys", "server", str(proxy_dir)]) == 0
    assert main(["keys", "client", str(client_dir)]) == 0
    for secret in (proxy_dir / "server.key_secret", client_dir / "client.key_secret"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        public, private = zmq.auth.load_certificate(secret)
        assert len(public) == len(private) == 40
    assert (proxy_dir / "clients").is_dir() and not any((proxy_dir / "clients").iterdir())
    assert zmq.auth.load_certificate(proxy_dir / "server.key")[1] is None
    capsys.readouterr()
    assert main(["keys", "server", str(proxy_dir)]) != 0  # never overwritten
    assert "exists" in capsys.readouterr().err
    assert main(["keys", "allow", str(proxy_dir), str(client_dir / "client.key_secret")]) != 0
    assert "holds a secret key" in capsys.readouterr().err
    assert main(["keys", "allow", str(proxy_dir), str(client_dir / "client.key"),
                 "--name", "bl-pc"]) == 0
    assert (proxy_dir / "clients" / "bl-pc.key").read_bytes() == \
        (client_dir / "client.key").read_bytes()
    assert CurveServer.from_dir(proxy_dir).keys()[0] == \
        zmq.auth.load_certificate(proxy_dir / "server.key")[0]
