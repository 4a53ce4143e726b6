"""A real Visdom server as a pytest fixture, for any test module that wants one.

Import the fixture into the test module (pytest's default "prepend" import mode puts
tests/ on sys.path, and tests/ has no __init__.py):

    from visdom_fixture import visdom_server  # noqa: F401  (registers the fixture)

    def test_curves(visdom_server):
        monitor = visdom_server.monitor(env="my_test")
        monitor.line("loss", 0, {"loss": 1.0})
        assert visdom_server.window("my_test", "loss")["content"]["data"][0]["y"] == [1.0]

The server runs once per importing module (it starts in about a second), listens on
127.0.0.1 on a free port, keeps its environments in a temporary folder, and is stopped
after the module's last test. Tests using it are skipped when visdom is not installed.
"""
from __future__ import annotations

import importlib.util
import json
import urllib.request
from dataclasses import dataclass

import pytest

from guided_diffusion.util.monitor import Monitor
from guided_diffusion.util.visdom_server import start_server, stop_server


@dataclass(frozen=True)
class VisdomServer:
    """Where the test server listens, and helpers to read back what was sent to it."""

    server: str
    port: int

    def monitor(self, env: str = "main") -> Monitor:
        """An enabled ``Monitor`` writing to environment ``env`` of this server."""
        return Monitor(enabled=True, server=self.server, port=self.port, env=env)

    def window(self, env: str, win: str) -> dict:
        """The stored JSON of window ``win`` in ``env`` (``POST /win_data``)."""
        return self._post("win_data", {"eid": env, "win": win})

    def windows(self, env: str) -> dict:
        """All windows of ``env``, keyed by window name."""
        return self._post("win_data", {"eid": env, "win": None})

    def envs(self) -> list:
        """Names of the environments the server holds (``POST /env_state``)."""
        return self._post("env_state", {})

    def _post(self, endpoint: str, body: dict):
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(
            f"{self.server}:{self.port}/{endpoint}", data=json.dumps(body).encode(), method="POST"
        )
        with opener.open(request, timeout=10) as response:
            return json.loads(response.read())


@pytest.fixture(scope="module")
def visdom_server(tmp_path_factory):
    """Start a Visdom server for this module; yield a ``VisdomServer``; stop it afterwards."""
    if importlib.util.find_spec("visdom") is None:
        pytest.skip("visdom is not installed (pip install -e '.[visdom]')")
    process, port = start_server(env_path=tmp_path_factory.mktemp("visdom_env"), timeout=30)
    try:
        yield VisdomServer(server="http://127.0.0.1", port=port)
    finally:
        stop_server(process)
