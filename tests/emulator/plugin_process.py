"""Run a plugin the way Dify's serverless runtime does: ``python -m main`` as its own process.

Emulates the daemon's serverless launch (SDK ``plugin.py`` ``_launch_serverless_stream`` and
``core/server/serverless/request_reader.py``): the SDK, configured by environment variables
(``config/config.py`` ``DifyPluginEnv``), serves ``POST /invoke`` and ``GET /health`` over
gevent's WSGI server and sends backwards invocations to
``$DIFY_PLUGIN_DAEMON_URL/backwards-invocation/transaction``.

The process runs with the plugin directory as CWD (the SDK reads ``manifest.yaml``,
``_assets/`` and the YAML files relative to it). Its stdout and stderr go to one log file the
tests can read (e.g. to assert that no secret was logged). Nothing here imports ``dify_plugin``:
that import monkey-patches the importing process with gevent.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The plugin this repository builds (``manifest.yaml`` lives here)."""


class PluginStartError(RuntimeError):
    """The plugin process exited or did not answer ``/health`` in time."""


def free_port() -> int:
    """An unused TCP port on 127.0.0.1 (tiny race window until the plugin binds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PluginProcess:
    """One serverless plugin process.

    ``daemon_url`` is what the SDK uses as ``DIFY_PLUGIN_DAEMON_URL``; ``env`` is added on top
    of the inherited environment (after the serverless variables, so a test may override
    them). ``max_invocation_timeout`` bounds every backwards invocation in the SDK (connect/read
    timeout of its httpx client), so a wrong emulator answer cannot hang a test for 250 s.
    """

    def __init__(
        self,
        daemon_url: str,
        *,
        plugin_dir: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        python: str | None = None,
        max_invocation_timeout: int = 10,
        name: str = "plugin",
    ) -> None:
        self.daemon_url = daemon_url
        self.plugin_dir = Path(plugin_dir) if plugin_dir is not None else REPO_ROOT
        self.extra_env = dict(env or {})
        self.python = python or sys.executable
        self.max_invocation_timeout = max_invocation_timeout
        self.name = name
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_dir = tempfile.TemporaryDirectory(prefix="plugin-log-")
        self.log_path = Path(self._log_dir.name) / f"{name}.log"
        self.log_path.touch()

    # ------------------------------------------------------------------ properties

    @property
    def url(self) -> str:
        """Base URL of the plugin's serverless HTTP server."""
        if self.port is None:
            raise RuntimeError("plugin process not started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def logs(self) -> str:
        """Everything the process wrote to stdout and stderr so far (all its runs)."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    # ------------------------------------------------------------------ lifecycle

    def start(self, timeout: float = 30.0) -> None:
        """Start ``python -m main`` and wait (bounded) until ``GET /health`` answers OK."""
        if self.is_running():
            raise RuntimeError("plugin process already running")
        self.port = free_port()
        env = dict(os.environ)
        env.update(
            {
                "INSTALL_METHOD": "serverless",
                "SERVERLESS_HOST": "127.0.0.1",
                "SERVERLESS_PORT": str(self.port),
                "DIFY_PLUGIN_DAEMON_URL": self.daemon_url,
                "MAX_INVOCATION_TIMEOUT": str(self.max_invocation_timeout),
                "PYTHONUNBUFFERED": "1",
                "PYTHONDONTWRITEBYTECODE": "1",
            }
        )
        env.update(self.extra_env)
        with self.log_path.open("ab") as log:
            log.write(f"=== {self.name}: start on port {self.port} ===\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                [self.python, "-m", "main"],
                cwd=str(self.plugin_dir),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PluginStartError(
                    f"{self.name} exited with {self._proc.returncode} during start:\n{self.logs()}"
                )
            if self._healthy():
                return
            time.sleep(0.05)
        self.stop()
        raise PluginStartError(f"{self.name} not healthy after {timeout}s:\n{self.logs()}")

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=1.0) as r:
                return bool(r.status == 200 and r.read().strip() == b"OK")
        except (OSError, urllib.error.URLError):
            return False

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; never raises for a dead process."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=timeout)
        with contextlib.suppress(OSError), self.log_path.open("ab") as log:
            log.write(f"=== {self.name}: stopped ({proc.returncode}) ===\n".encode())

    def close(self) -> None:
        """Stop the process and delete its log file."""
        self.stop()
        self._log_dir.cleanup()

    def __enter__(self) -> PluginProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
