"""Tests of guided_diffusion.util.monitor against a real Visdom server (SPEC section 7).

The server comes from tests/visdom_fixture.py; what the monitor sent is read back
through the server's HTTP API (POST /win_data). No browser is involved.
"""
from __future__ import annotations

import base64
import io
import socket
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from visdom_fixture import visdom_server  # noqa: F401  (registers the fixture)

from guided_diffusion.util import monitor as monitor_module
from guided_diffusion.util.flags import MonitorFlags
from guided_diffusion.util.monitor import Monitor, MonitorWarning
from guided_diffusion.util.visdom_server import (
    find_free_port,
    start_server,
    stop_server,
)

REPO = Path(__file__).resolve().parents[1]


def _decode_png(window: dict) -> np.ndarray:
    """(H, W, 3) uint8 pixels of an image window."""
    src = window["content"]["src"]
    header, payload = src.split(",", 1)
    assert header == "data:image/png;base64"
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(payload))).convert("RGB"))


def _monitor_warnings(caught) -> list:
    return [w for w in caught if issubclass(w.category, MonitorWarning)]


# ---------------------------------------------------------------- against a live server


def test_line_appends_one_trace_per_key(visdom_server):  # noqa: F811
    monitor = visdom_server.monitor(env="test_line")
    steps = [0, 10, 20, 30, 40, 50]
    for step in steps:
        monitor.line("loss", step, {"loss": 1.0 / (step + 1), "mse": 0.01 * step, "vb": torch.tensor(0.5)})
    monitor.line("loss", 60, {"loss": float("nan"), "mse": 0.6, "vb": 0.5, "acc": 0.75})  # a new key

    assert monitor.enabled
    window = visdom_server.window("test_line", "loss")
    assert window["title"] == "loss"
    traces = {trace["name"]: trace for trace in window["content"]["data"]}
    assert sorted(traces) == ["acc", "loss", "mse", "vb"]
    for name in ("loss", "mse", "vb"):
        assert traces[name]["x"] == [float(s) for s in steps + [60]]
    np.testing.assert_allclose(traces["loss"]["y"][:-1], [1.0 / (s + 1) for s in steps])
    assert traces["loss"]["y"][-1] is None  # NaN leaves a gap
    np.testing.assert_allclose(traces["mse"]["y"], [0.01 * s for s in steps] + [0.6])
    assert traces["vb"]["y"] == [0.5] * 7
    assert traces["acc"]["x"] == [60.0] and traces["acc"]["y"] == [0.75]


def test_line_of_a_new_monitor_replaces_the_old_window(visdom_server):  # noqa: F811
    first = visdom_server.monitor(env="test_rerun")
    for step in range(3):
        first.line("loss", step, {"loss": 1.0})
    second = visdom_server.monitor(env="test_rerun")
    second.line("loss", 0, {"loss": 2.0}, title="rerun")
    window = visdom_server.window("test_rerun", "loss")
    assert window["title"] == "rerun"
    assert [trace["y"] for trace in window["content"]["data"]] == [[2.0]]


def test_images_of_the_input_channels_form_one_row(visdom_server):  # noqa: F811
    x = torch.rand(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))  # (B, C, H, W) in [0, 1]
    monitor = visdom_server.monitor(env="test_images")
    monitor.images("input", x[0], title="input channels")  # (C, H, W): 4 tiles

    window = visdom_server.window("test_images", "input")
    assert window["title"] == "input channels"
    pixels = _decode_png(window)
    # 4 tiles of 16 px in a row, 2 px padding around each: width 2 + 4 * 18, height 2 + 18
    assert pixels.shape == (20, 74, 3)
    for c in range(4):
        left = 2 + c * 18
        expected = np.round(x[0, c].numpy() * 255).astype(np.uint8)
        np.testing.assert_array_equal(pixels[2:18, left : left + 16, 0], expected)
        np.testing.assert_array_equal(pixels[2:18, left : left + 16, 1], expected)  # grayscale


def test_images_of_a_batch_put_one_sample_per_row(visdom_server):  # noqa: F811
    x_t = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))  # values outside [0, 1]
    monitor = visdom_server.monitor(env="test_images")
    monitor.images("step", x_t)
    monitor.images("list", [np.full((8, 8), 0.5), np.zeros((1, 8, 8))], nrow=1)

    pixels = _decode_png(visdom_server.window("test_images", "step"))
    assert pixels.shape == (2 + 3 * 10, 2 + 4 * 10, 3)
    tile = pixels[2 + 2 * 10 : 2 + 2 * 10 + 8, 2 + 3 * 10 : 2 + 3 * 10 + 8, 0]  # sample 2, channel 3
    assert tile.min() == 0 and tile.max() == 255  # min-max scaled on its own
    ref = x_t[2, 3].numpy()
    np.testing.assert_array_equal(tile, np.round((ref - ref.min()) / (ref.max() - ref.min()) * 255))

    pixels = _decode_png(visdom_server.window("test_images", "list"))
    assert pixels.shape == (2 + 2 * 10, 2 + 10, 3)  # nrow=1: a column
    assert (pixels[2:10, 2:10] == 128).all() and (pixels[12:20, 2:10] == 0).all()


def test_image_accepts_tensors_and_scales_for_display(visdom_server):  # noqa: F811
    monitor = visdom_server.monitor(env="test_image")
    gt = torch.zeros(1, 12, 20, requires_grad=True) + torch.linspace(-1.0, 3.0, 20)  # (1, H, W)
    monitor.image("ground_truth", gt)
    monitor.image("mask", np.eye(6))  # (H, W) already in [0, 1]

    window = visdom_server.window("test_image", "ground_truth")
    assert (window["width"], window["height"]) == (20, 12)
    pixels = _decode_png(window)
    assert pixels.shape == (12, 20, 3)
    assert pixels[:, 0].max() == 0 and pixels[:, -1].min() == 255
    np.testing.assert_array_equal(_decode_png(visdom_server.window("test_image", "mask"))[..., 0], np.eye(6) * 255)


def test_heatmap_is_sent_upright(visdom_server):  # noqa: F811
    amap = torch.arange(35, dtype=torch.float32).reshape(5, 7) / 10  # (H, W)
    amap[0, 0] = float("nan")
    monitor = visdom_server.monitor(env="test_heatmap")
    monitor.heatmap("anomaly", amap, title="anomaly map")

    window = visdom_server.window("test_heatmap", "anomaly")
    assert window["title"] == "anomaly map"
    (trace,) = window["content"]["data"]
    assert trace["type"] == "heatmap"
    z = trace["z"]
    assert len(z) == 5 and all(len(row) == 7 for row in z)
    # Plotly puts z[0] at the bottom, so the map's last row is sent first.
    np.testing.assert_allclose(z[0], amap[-1].numpy(), rtol=1e-6)
    assert z[-1][0] is None  # NaN becomes a hole
    np.testing.assert_allclose(z[-1][1:], amap[0, 1:].numpy(), rtol=1e-6)


def test_text_is_escaped_and_appends(visdom_server):  # noqa: F811
    monitor = visdom_server.monitor(env="test_text")
    monitor.text("flags", "noise_level=500\n<s>=100")
    monitor.text("flags", "done", append=True)
    window = visdom_server.window("test_text", "flags")
    assert window["content"] == "noise_level=500<br>&lt;s&gt;=100<br>done"


def test_missing_visdom_package_warns_once(visdom_server, monkeypatch):  # noqa: F811
    monkeypatch.setitem(sys.modules, "visdom", None)  # makes `import visdom` fail
    monitor = visdom_server.monitor(env="test_missing")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(5):
            monitor.line("loss", step, {"loss": 1.0})
            monitor.heatmap("anomaly", np.zeros((4, 4)))
    (warning,) = _monitor_warnings(caught)
    assert "visdom package is not installed" in str(warning.message)
    assert not monitor.enabled


def test_start_server_refuses_a_port_in_use(visdom_server):  # noqa: F811
    with pytest.raises(RuntimeError, match=f"port {visdom_server.port}: the port is already in use"):
        start_server(port=visdom_server.port)


# ---------------------------------------------------------------- no server, failures


def _calls(monitor: Monitor, n: int) -> None:
    """``n`` calls cycling through every method, as a training/translation loop would."""
    img = torch.rand(1, 8, 8)
    for i in range(n):
        kind = i % 5
        if kind == 0:
            monitor.line("loss", i, {"loss": 1.0, "mse": 0.5})
        elif kind == 1:
            monitor.image("ground_truth", img)
        elif kind == 2:
            monitor.images("input", img.expand(4, 8, 8))
        elif kind == 3:
            monitor.heatmap("anomaly", img[0])
        else:
            monitor.text("info", "step")


def test_no_server_warns_once_and_returns_quickly():
    port = find_free_port()  # nothing listens there
    monitor = Monitor(enabled=True, server="http://127.0.0.1", port=port, env="nobody")
    start = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _calls(monitor, 20)
    elapsed = time.monotonic() - start

    assert elapsed < 5.0
    (warning,) = _monitor_warnings(caught)
    assert len(caught) == 1
    message = str(warning.message)
    assert f"http://127.0.0.1:{port}" in message
    assert f"python -m guided_diffusion.util.visdom_server --port {port}" in message
    assert warning.filename == __file__  # points at the caller's line, not into the monitor
    assert not monitor.enabled


def test_server_lost_mid_run_warns_once(tmp_path):
    process, port = start_server(env_path=tmp_path)
    try:
        monitor = Monitor(enabled=True, port=port, env="lost")
        monitor.line("loss", 0, {"loss": 1.0})
        assert monitor.enabled
    finally:
        stop_server(process)

    start = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _calls(monitor, 10)
    assert time.monotonic() - start < 5.0
    (warning,) = _monitor_warnings(caught)
    assert f"a call to the Visdom server at http://127.0.0.1:{port} failed" in str(warning.message)
    assert not monitor.enabled


class _NotFound(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        self.send_response(404)
        self.send_header("Content-Length", "9")
        self.end_headers()
        self.wfile.write(b"not found")

    def log_message(self, *args):
        pass


def test_a_server_that_is_not_visdom_warns_once():
    httpd = HTTPServer(("127.0.0.1", 0), _NotFound)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        monitor = Monitor(enabled=True, port=httpd.server_address[1])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _calls(monitor, 10)
    finally:
        httpd.shutdown()
        httpd.server_close()
    (warning,) = _monitor_warnings(caught)
    assert "does not answer like a Visdom server" in str(warning.message)


def test_a_server_that_never_answers_does_not_hang(monkeypatch):
    monkeypatch.setattr(monitor_module, "CONNECT_TIMEOUT_S", 0.5)
    with socket.socket() as silent:  # the kernel accepts connections; nobody ever replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        monitor = Monitor(enabled=True, port=silent.getsockname()[1])
        start = time.monotonic()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            _calls(monitor, 10)
        elapsed = time.monotonic() - start
    assert elapsed < 4.0
    assert len(_monitor_warnings(caught)) == 1
    assert not monitor.enabled


# ---------------------------------------------------------------- disabled, import, flags


def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_disabled_monitor_does_nothing_and_never_imports_visdom():
    result = _run_python(
        """
        import sys, warnings
        import numpy as np
        warnings.simplefilter("error")
        from guided_diffusion.util.monitor import Monitor
        monitor = Monitor()
        assert not monitor.enabled
        for step in range(100):
            monitor.line("loss", step, {"loss": 1.0})
            monitor.image("ground_truth", np.zeros((8, 8)))
            monitor.images("input", np.zeros((4, 8, 8)))
            monitor.heatmap("anomaly", np.zeros((8, 8)))
            monitor.text("info", "x")
        for name in ("visdom", "requests"):
            assert name not in sys.modules, name
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("ok\n", "")


def test_import_has_no_side_effects():
    result = _run_python(
        """
        import sys, threading
        before = threading.active_count()
        import guided_diffusion.util.monitor
        import guided_diffusion.util.visdom_server
        assert threading.active_count() == before
        for name in ("visdom", "requests", "tornado"):
            assert name not in sys.modules, name
        """
    )
    assert result.returncode == 0, result.stderr
    assert (result.stdout, result.stderr) == ("", "")


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: m.image("gt", np.zeros((4, 8, 8))), r"Monitor.image\('gt'\).*use Monitor.images\(\)"),
        (lambda m: m.image("gt", np.zeros((2, 1, 8, 8))), r"Monitor.image\('gt'\)"),
        (lambda m: m.images("input", np.zeros((1, 1, 1, 8, 8))), r"Monitor.images\('input'\)"),
        (lambda m: m.images("input", []), "empty list"),
        (lambda m: m.images("input", [np.zeros((8, 8)), np.zeros((4, 4))]), "of one size"),
        (lambda m: m.images("input", np.zeros((4, 8, 8)), nrow=0), "nrow=0"),
        (lambda m: m.heatmap("anomaly", np.zeros((2, 8, 8))), r"Monitor.heatmap\('anomaly'\)"),
    ],
)
def test_wrong_shapes_raise_even_when_disabled(call, match):
    with pytest.raises(ValueError, match=match):
        call(Monitor(enabled=False))


def test_flags_and_from_flags():
    assert MonitorFlags.defaults() == dict(visdom=False, visdom_server="http://127.0.0.1", visdom_port=8850,
                                           visdom_every=50)

    flags = MonitorFlags(visdom=True, visdom_server="http://localhost", visdom_port=9001)
    monitor = Monitor.from_flags(flags, env="classifier_train")
    assert (monitor.enabled, monitor.server, monitor.port, monitor.env) == (
        True,
        "http://localhost",
        9001,
        "classifier_train",
    )
    assert monitor.address == "http://localhost:9001"
    assert not Monitor.from_flags(MonitorFlags()).enabled
    with pytest.raises(ValueError, match="--visdom 'False'"):
        Monitor(enabled="False")
