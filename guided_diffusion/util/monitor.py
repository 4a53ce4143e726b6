"""Optional live monitoring in Visdom (SPEC section 7).

The original code opened a Visdom connection at import time and crashed, or printed
pages of tracebacks, when no server ran. Here monitoring is an object the scripts
build in ``main()`` from the ``--visdom*`` flags:

    monitor = Monitor.from_flags(cfg.monitoring, env="classifier_train")
    monitor.line("loss", step, {"loss": 0.7, "acc": 0.5})
    monitor.images("input", x[0])          # (C, H, W): one grayscale tile per channel
    monitor.heatmap("anomaly", amap)       # (H, W)

- Disabled (the default), every method returns at once: no ``import visdom`` (it takes
  seconds and may be absent), no connection, no tensor leaves its device.
- Enabled, the first call connects (bounded by ``CONNECT_TIMEOUT_S``). When the server
  does not answer or visdom is not installed, the monitor warns once, naming
  ``server:port`` and how to start a server, and turns itself off; so does any later
  failure of a Visdom call. Monitoring never stops or hangs a run.
- Images are grayscale in [0, 1]; an image with values outside [0, 1] is min-max scaled
  for display (each tile on its own). Torch tensors are detached and copied to the CPU
  only when monitoring is on.
- Wrong shapes raise ``ValueError`` whether or not monitoring is on, so a bad call
  fails in the tests rather than only in a monitored run.

Start a server with ``python -m guided_diffusion.util.visdom_server --port 8850`` (see
``guided_diffusion/util/visdom_server.py``), then open http://127.0.0.1:8850.
"""
from __future__ import annotations

import contextlib
import html
import logging
import math
import socket
import warnings
from typing import Any, Callable, Iterator, Mapping, Sequence
from urllib.parse import urlsplit

import numpy as np

from .errors import UserError
from .flags import MonitorFlags

# Seconds allowed for the first contact (TCP probe, then each HTTP request while
# connecting) and for every request afterwards. A server that stops answering costs
# one REQUEST_TIMEOUT_S, then monitoring is off.
CONNECT_TIMEOUT_S = 2.0
REQUEST_TIMEOUT_S = 10.0

_GRID_PADDING = 2  # pixels between tiles in images()
_GRID_FILL = 255  # white separators
_DEFAULT_TILES_PER_ROW = 8

__all__ = [
    "CONNECT_TIMEOUT_S",
    "REQUEST_TIMEOUT_S",
    "Monitor",
    "MonitorWarning",
]


class MonitorWarning(UserWarning):
    """Monitoring was requested but is off (no server, no visdom, or a failed call)."""


class _Unavailable(Exception):
    """Raised while connecting; its message becomes the one warning."""


class Monitor:
    """Visdom client for training curves and translation images; a no-op when disabled.

    :param enabled: ``--visdom``; False makes every method return immediately.
    :param server: ``--visdom_server``, e.g. ``"http://127.0.0.1"``.
    :param port: ``--visdom_port`` (the original used 8850).
    :param env: the Visdom environment (a tab in the page) this monitor writes to.
    """

    def __init__(
        self,
        enabled: bool = False,
        server: str = "http://127.0.0.1",
        port: int = 8850,
        env: str = "main",
    ):
        if isinstance(enabled, str):
            raise UserError(f"--visdom {enabled!r}: expected a bool (True or False), got a string")
        self.server = server
        self.port = int(port)
        self.env = env
        self._enabled = bool(enabled)
        self._client = None  # the visdom.Visdom object, made on first use
        self._created: set[str] = set()  # line/text windows this monitor has opened

    @classmethod
    def from_flags(cls, flags: MonitorFlags, env: str = "main") -> "Monitor":
        """Build from the ``--visdom``, ``--visdom_server`` and ``--visdom_port`` flags."""
        return cls(enabled=flags.visdom, server=flags.visdom_server, port=flags.visdom_port, env=env)

    @property
    def enabled(self) -> bool:
        """True while monitoring is on; False if disabled or switched off after a failure."""
        return self._enabled

    @property
    def address(self) -> str:
        """``server:port``, as used in messages."""
        return f"{self.server.rstrip('/')}:{self.port}"

    def __repr__(self) -> str:
        return f"Monitor(enabled={self._enabled}, server={self.server!r}, port={self.port}, env={self.env!r})"

    # ------------------------------------------------------------------ public calls

    def line(self, win: str, step: int, values: Mapping[str, float], title: str | None = None) -> None:
        """Append one point per key of ``values`` at x = ``step`` to the line plot ``win``.

        Each key is its own trace. The first call (per window and monitor) creates the
        window, replacing one of the same name left by an earlier run; later calls
        append, and a key not seen before starts a new trace. Non-finite values leave
        a gap.
        """
        if not self._enabled or not values:
            return

        def send(vis):
            names = [str(k) for k in values]
            ys = [_finite_or_nan(v) for v in values.values()]
            x = float(step)
            if win not in self._created:
                opts = dict(title=title or win, legend=names, xlabel="step", showlegend=True)
                # (1, K): one point on each of K traces
                vis.line(Y=np.array([ys]), X=np.full((1, len(ys)), x), win=win, env=self.env, opts=opts)
                self._created.add(win)
            else:
                for name, y in zip(names, ys):
                    vis.line(
                        Y=np.array([y]), X=np.array([x]), win=win, env=self.env, update="append", name=name
                    )

        self._run(send)

    def image(self, win: str, img: Any, title: str | None = None) -> None:
        """Show one image in window ``win``, replacing what it showed.

        :param img: ``(H, W)`` or ``(1, H, W)`` grayscale, or ``(3, H, W)`` RGB; numpy
            array or torch tensor, values in [0, 1] (other ranges are min-max scaled).
        """
        shape = _shape_of(img)
        if not (len(shape) == 2 or (len(shape) == 3 and shape[0] in (1, 3))):
            raise ValueError(
                f"Monitor.image({win!r}): expected an (H, W), (1, H, W) or (3, H, W) image, got shape "
                f"{shape}; use Monitor.images() to show several channels or images as a grid"
            )
        if not self._enabled:
            return

        def send(vis):
            pixels = _to_uint8(_to_numpy(img))
            if pixels.ndim == 3 and pixels.shape[0] == 1:
                pixels = pixels[0]
            vis.image(pixels, win=win, env=self.env, opts=dict(title=title or win))

        self._run(send)

    def images(self, win: str, imgs: Any, title: str | None = None, nrow: int | None = None) -> None:
        """Show several grayscale images as one grid in window ``win``.

        :param imgs: ``(N, H, W)`` (e.g. the C channels of one input), ``(N, 1, H, W)``,
            ``(N, C, H, W)`` (each of the N*C channels is a tile; sample n fills row n
            by default), ``(H, W)``, or a list of ``(H, W)`` / ``(1, H, W)`` arrays or
            tensors. Each tile outside [0, 1] is min-max scaled on its own.
        :param nrow: tiles per row; default C for ``(N, C, H, W)`` with C > 1, else up
            to 8.
        """
        per_row = _check_tiles(win, imgs)
        if nrow is not None:
            if int(nrow) < 1:
                raise ValueError(f"Monitor.images({win!r}): nrow={nrow}, expected >= 1")
            per_row = int(nrow)
        if not self._enabled:
            return

        def send(vis):
            tiles = [_to_uint8(tile) for tile in _tiles(imgs)]
            vis.image(_grid(tiles, per_row), win=win, env=self.env, opts=dict(title=title or win))

        self._run(send)

    def heatmap(self, win: str, amap: Any, title: str | None = None) -> None:
        """Show an ``(H, W)`` (or ``(1, H, W)``) map, e.g. the anomaly map, as a heatmap.

        Values are shown as they are (the colour bar gives the scale). Plotly draws row 0
        at the bottom, so the rows are sent flipped: the heatmap appears upright, like
        ``image()`` of the same array, and row 0 of the window's ``z`` is the last row
        of ``amap``.
        """
        shape = _shape_of(amap)
        if not (len(shape) == 2 or (len(shape) == 3 and shape[0] == 1)):
            raise ValueError(f"Monitor.heatmap({win!r}): expected an (H, W) map, got shape {shape}")
        if not self._enabled:
            return

        def send(vis):
            z = _to_numpy(amap).reshape(shape[-2:]).astype(np.float64)
            z[~np.isfinite(z)] = np.nan  # sent as null: a hole in the map
            vis.heatmap(z[::-1], win=win, env=self.env, opts=dict(title=title or win))

        self._run(send)

    def text(self, win: str, text: str, title: str | None = None, append: bool = False) -> None:
        """Show plain ``text`` (HTML-escaped, newlines kept) in window ``win``.

        ``append=True`` adds it below what the window shows; otherwise it replaces it.
        """
        if not self._enabled:
            return

        def send(vis):
            body = html.escape(str(text)).replace("\n", "<br>")
            if append and win in self._created:
                vis.text(body, win=win, env=self.env, append=True)
            else:
                vis.text(body, win=win, env=self.env, opts=dict(title=title or win))
                self._created.add(win)

        self._run(send)

    # ------------------------------------------------------------------ connection

    def _run(self, send: Callable[[Any], None]) -> None:
        """Connect on first use, then ``send(client)``; any failure warns once and disables."""
        if self._client is None:
            try:
                self._client = _connect(self.server, self.port, self.env)
            except _Unavailable as exc:
                self._disable(str(exc))
                return
        try:
            send(self._client)
        except Exception as exc:  # never let monitoring stop a run
            self._disable(
                f"a call to the Visdom server at {self.address} failed ({type(exc).__name__}: {exc})"
            )

    def _disable(self, reason: str) -> None:
        self._enabled = False
        self._client = None
        # stacklevel 4: _disable <- _run <- public method <- the caller's line
        warnings.warn(
            f"Visdom monitoring is off: {reason}. Start a server with "
            f"`python -m guided_diffusion.util.visdom_server --port {self.port}` and open "
            f"{self.address}, or run with --visdom False.",
            MonitorWarning,
            stacklevel=4,
        )


def _connect(server: str, port: int, env: str):
    """Return a connected ``visdom.Visdom`` client, or raise ``_Unavailable`` saying why."""
    url = server if "://" in server else f"http://{server}"
    host = urlsplit(url).hostname
    if not host:
        raise _Unavailable(f"--visdom_server {server!r} is not a URL such as http://127.0.0.1")
    address = f"{url.rstrip('/')}:{port}"

    # A TCP probe first: it fails fast with no server, before the slow `import visdom`,
    # and bounds the wait on a host that drops packets.
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise _Unavailable(f"no Visdom server answers at {address} ({exc.strerror or exc})") from None

    try:
        import visdom
    except ImportError as exc:
        raise _Unavailable(
            f"the visdom package is not installed ({exc}); install it with "
            "`pip install -e '.[visdom]'` (visdom 0.2.4 builds with setuptools<81; see constraints.txt)"
        ) from None

    loopback = host in ("localhost", "::1") or host.startswith("127.")
    try:
        with _quiet_visdom():
            client = _client_class(visdom)(
                server=url,
                port=port,
                env=env,
                raise_exceptions=True,
                use_incoming_socket=False,
                timeout_s=CONNECT_TIMEOUT_S,
                use_proxy=not loopback,
            )
            # One round trip that only a Visdom server answers with a JSON list. (Not
            # check_connection(): it polls, and prints while it waits or fails.)
            envs = client.get_env_list()
    except ValueError:  # the reply was not JSON
        envs = None
    except Exception as exc:
        raise _Unavailable(f"no Visdom server answers at {address} ({type(exc).__name__}: {exc})") from None
    if not isinstance(envs, list):
        raise _Unavailable(f"the server at {address} does not answer like a Visdom server")
    client.timeout_s = REQUEST_TIMEOUT_S
    return client


def _client_class(visdom):
    """``visdom.Visdom`` with a timeout on every request (visdom's own has none).

    ``_handle_post`` is the hook visdom documents for changing how requests are sent.
    Loopback servers skip the environment's HTTP proxy settings. ``win_exists`` (which
    ``line(update="append")`` calls) raises on a failed request instead of printing.
    """
    import requests  # a dependency of visdom

    class _TimedVisdom(visdom.Visdom):
        def __init__(self, *args, timeout_s: float, use_proxy: bool, **kwargs):
            self.timeout_s = timeout_s
            self._http = requests.Session()
            self._http.trust_env = use_proxy
            super().__init__(*args, **kwargs)

        def _handle_post(self, url, data=None):
            response = self._http.post(url, data={} if data is None else data, timeout=self.timeout_s)
            return response.text

        def win_exists(self, win, env=None):
            # visdom's version prints a line and returns None when the request fails;
            # raising instead leaves the monitor's one warning as the only message.
            return self._send({"win": win, "eid": env}, endpoint="win_exists", quiet=True) == "true"

    return _TimedVisdom


@contextlib.contextmanager
def _quiet_visdom() -> Iterator[None]:
    """Silence visdom's log lines (and the DeprecationWarning of ``Logger.warn``) while connecting.

    With ``use_incoming_socket=False`` the client logs that it cannot receive events,
    which is what we want, not news.
    """
    log = logging.getLogger("visdom")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        log.setLevel(level)


# ---------------------------------------------------------------------- array helpers


def _shape_of(x: Any) -> tuple[int, ...]:
    """Shape of an array, tensor or nested list, without copying tensor data."""
    shape = getattr(x, "shape", None)
    return tuple(int(s) for s in (shape if shape is not None else np.shape(x)))


def _to_numpy(x: Any) -> np.ndarray:
    """float32 numpy copy of a numpy array or torch tensor (detached, on the CPU)."""
    if hasattr(x, "detach"):  # a torch.Tensor; checked by duck typing so torch is not imported here
        x = x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


def _finite_or_nan(value: Any) -> float:
    value = float(value)
    return value if math.isfinite(value) else float("nan")


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """[0, 1] -> [0, 255] uint8; an image outside [0, 1] is min-max scaled first."""
    img = np.where(np.isfinite(img), img, 0.0).astype(np.float32)
    lo, hi = (float(img.min()), float(img.max())) if img.size else (0.0, 1.0)
    if lo < 0.0 or hi > 1.0:
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
    return np.round(img * 255.0).astype(np.uint8)


def _check_tiles(win: str, imgs: Any) -> int:
    """Validate the argument of ``images()``; return the default number of tiles per row."""
    if isinstance(imgs, (list, tuple)):
        if not imgs:
            raise ValueError(f"Monitor.images({win!r}): got an empty list")
        shapes = {_shape_of(t) for t in imgs}
        plane = {s[-2:] for s in shapes}
        if len(plane) != 1 or any(not (len(s) == 2 or (len(s) == 3 and s[0] == 1)) for s in shapes):
            raise ValueError(
                f"Monitor.images({win!r}): expected a list of (H, W) or (1, H, W) images of one size, "
                f"got shapes {sorted(shapes)}"
            )
        return min(len(imgs), _DEFAULT_TILES_PER_ROW)
    shape = _shape_of(imgs)
    if len(shape) == 2:
        return 1
    if len(shape) == 3:
        return max(1, min(shape[0], _DEFAULT_TILES_PER_ROW))
    if len(shape) == 4:
        n, c = shape[:2]
        return c if c > 1 else max(1, min(n, _DEFAULT_TILES_PER_ROW))
    raise ValueError(
        f"Monitor.images({win!r}): expected (N, H, W), (N, C, H, W), (H, W) or a list of (H, W), "
        f"got shape {shape}"
    )


def _tiles(imgs: Any) -> list[np.ndarray]:
    """Split the argument of ``images()`` into (H, W) float32 tiles, in row-major order."""
    if isinstance(imgs, (list, tuple)):
        return [_to_numpy(t).reshape(_shape_of(t)[-2:]) for t in imgs]
    arr = _to_numpy(imgs)
    h, w = arr.shape[-2:]
    return list(arr.reshape(-1, h, w))  # (N, C, H, W) -> (N*C, H, W)


def _grid(tiles: Sequence[np.ndarray], per_row: int) -> np.ndarray:
    """Lay equal-size (H, W) uint8 tiles out row by row, ``per_row`` to a row."""
    h, w = tiles[0].shape
    cols = min(per_row, len(tiles))
    rows = math.ceil(len(tiles) / cols)
    pad = _GRID_PADDING
    grid = np.full((pad + rows * (h + pad), pad + cols * (w + pad)), _GRID_FILL, dtype=np.uint8)
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top : top + h, left : left + w] = tile
    return grid
