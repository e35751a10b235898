"""The embedded catalog server's life: a private API key kept across restarts, one server per
catalog folder, and no server outliving the command that started it (real processes, real
signals)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from labdct_live.catalog.client import connect
from labdct_live.catalog.errors import CatalogUnavailable
from labdct_live.catalog.server import CatalogServer, Terminated, _free_port, stop_on_signals

#: ``labdct-live`` in the interpreter running the tests.
CLI = [sys.executable, "-c", "import sys; from labdct_live.cli import main; sys.exit(main())"]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs. A server whose parent was killed is re-parented to init, which
    here may never reap it: a zombie counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _gone_within(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _answers(uri: str) -> bool:
    try:
        return httpx.get(f"{uri}/healthz", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False


def _server_pid(directory: Path) -> int:
    return json.loads((directory / "server.json").read_text())["pid"]


class Serve:
    """``labdct-live serve DIRECTORY ...`` in a subprocess, with the URI and key it printed."""

    def __init__(self, directory: Path, *options: str):
        self.process = subprocess.Popen([*CLI, "serve", str(directory), *options],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        text=True)
        self.uri = self.api_key = None
        for line in self.process.stdout:  # ends early if serve fails
            if line.startswith("tiled catalog "):
                self.uri = line.rsplit(" at ", 1)[1].strip()
            elif line.startswith("API key: "):
                self.api_key = line.split(": ", 1)[1].strip()
                return
        raise AssertionError(f"serve did not start: {self.process.communicate()[1]}")

    def signal(self, signum: int, timeout: float = 30.0) -> int:
        """Send ``signum``; the exit status."""
        self.process.send_signal(signum)
        return self.process.wait(timeout)

    def close(self) -> None:
        if self.process.poll() is None:
            self.signal(signal.SIGTERM)
        self.process.stdout.close()
        self.process.stderr.close()


@pytest.fixture
def serve():
    """Start ``Serve`` processes; whatever is left running is stopped at the end."""
    started: list[Serve] = []

    def start(directory: Path, *options: str) -> Serve:
        started.append(Serve(directory, *options))
        return started[-1]

    yield start
    for s in started:
        s.close()


def test_key_and_config_are_private_a_second_server_is_refused_restart_keeps_key(tmp_path):
    """The key is made once (0600) and kept by restart(); the config and the files naming the
    server are 0600 too, and the log holds no key. While the server runs, a second server on
    its folder is refused, naming the running one, and the first keeps serving."""
    directory = tmp_path / "catalog"
    with CatalogServer(directory) as server:
        key = server.api_key
        assert (directory / "api_key").read_text().strip() == key
        for name in ("api_key", "tiled-config.yml", "server.json", "server.lock", "server.log"):
            assert _mode(directory / name) == 0o600, name
        assert json.loads((directory / "server.json").read_text()) == {
            "pid": server.pid, "uri": server.uri}
        with pytest.raises(CatalogUnavailable) as refused:
            CatalogServer(directory).start()
        for named in (str(directory), server.uri, f"pid {server.pid}"):
            assert named in str(refused.value)
        assert _answers(server.uri)

        client = server.client()
        client.create_container("before")
        first_pid = server.pid
        server.restart()  # the lock goes with the old process and is retaken
        assert server.pid != first_pid and not _alive(first_pid)
        assert server.api_key == key
        assert "before" in client  # a client of the first start works after the restart
    assert not (directory / "server.json").exists()
    assert key not in (directory / "server.log").read_text()


@pytest.mark.parametrize(("mode", "content", "message"), [
    (0o644, "0123abcd\n", "chmod 600"),
    (0o600, "not a key!\n", "holds no usable key"),
])
def test_a_key_file_open_to_others_or_unusable_is_refused(tmp_path, mode, content, message):
    """A key others may have read is refused, not fixed: the file is left as it was."""
    directory = tmp_path / "catalog"
    directory.mkdir()
    key_file = directory / "api_key"
    key_file.write_text(content)
    key_file.chmod(mode)
    server = CatalogServer(directory)
    with pytest.raises(CatalogUnavailable, match=message):
        server.start()
    assert not server.running and not (directory / "server.json").exists()
    assert _mode(key_file) == mode and key_file.read_text() == content


def test_stop_on_signals_turns_sigterm_into_an_exception_once():
    """SIGTERM unwinds the block as Terminated (status 143); a repeat during the clean-up is
    ignored; the default action is back afterwards."""
    cleaned_up = False
    with pytest.raises(Terminated) as stopped:
        with stop_on_signals():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)  # interrupted at once
            finally:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.1)
                cleaned_up = True
    assert stopped.value.code == 128 + signal.SIGTERM and cleaned_up
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_serve_stops_its_server_on_sigterm_and_refuses_a_second_serve(tmp_path, serve):
    """A second ``serve`` of a served folder fails with a clear error and the first keeps
    serving; SIGTERM stops ``serve`` cleanly (status 0) and its server with it."""
    directory = tmp_path / "catalog"
    first = serve(directory, "--create")
    pid = _server_pid(directory)
    second = subprocess.run([*CLI, "serve", str(directory)], capture_output=True, text=True,
                            timeout=60)
    assert second.returncode != 0
    assert f"a catalog server already runs on {directory.resolve()}" in second.stderr
    assert first.uri in second.stderr
    assert _answers(first.uri)

    assert first.signal(signal.SIGTERM) == 0
    assert _gone_within(pid, 5.0)
    assert not _answers(first.uri)
    assert not (directory / "server.json").exists()


def test_serve_terminated_while_starting_leaves_no_server(tmp_path):
    """SIGTERM before the server answers: ``serve`` stops the half-started server."""
    directory = tmp_path / "catalog"
    process = subprocess.Popen([*CLI, "serve", str(directory), "--create"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not (directory / "server.json").exists():
        assert time.monotonic() < deadline, "serve never started its server"
        time.sleep(0.05)
    pid = _server_pid(directory)
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 128 + signal.SIGTERM
    assert _gone_within(pid, 5.0)


def test_a_killed_serve_takes_its_server_along_and_a_new_serve_keeps_the_key(tmp_path,
                                                                             serve):
    """SIGKILL leaves ``serve`` no chance to clean up: the server notices its parent is gone
    and stops. ``serve`` again on the same port has the same key, so a client made before
    carries on."""
    directory, port = tmp_path / "catalog", str(_free_port())
    first = serve(directory, "--create", "--port", port)
    pid = _server_pid(directory)
    client = connect(first.uri, first.api_key)
    client.create_container("before")

    assert first.signal(signal.SIGKILL) == -signal.SIGKILL
    assert _gone_within(pid, 10.0)
    assert not _answers(first.uri)

    again = serve(directory, "--port", port)
    assert (again.uri, again.api_key) == (first.uri, first.api_key)
    assert _mode(directory / "api_key") == 0o600
    assert "before" in client
