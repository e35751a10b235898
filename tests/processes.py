"""Helpers for tests that run the command line's servers in real processes."""

from __future__ import annotations

import subprocess


def end_processes(*processes: subprocess.Popen, timeout: float = 20.0) -> None:
    """Terminate each process still running (SIGTERM, then SIGKILL after ``timeout`` s)."""
    for process in processes:
        if process.poll() is not None:
            continue
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)
