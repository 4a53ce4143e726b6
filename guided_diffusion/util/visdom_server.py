"""Run a local Visdom server for ``--visdom True`` (SPEC section 7).

    python -m guided_diffusion.util.visdom_server --port 8850 --env_path ~/.visdom

then open http://127.0.0.1:8850. Unlike ``python -m visdom.server``, this does not
start by downloading the page's JavaScript and CSS, which crashes a machine without
internet; pass ``--download_assets`` once on a machine with internet to fetch them (the
HTTP API that ``Monitor`` and the tests use works without them). The server listens on
127.0.0.1 only, unless ``--bind_all``.

For tests and notebooks, ``start_server()`` runs the same entry point in a subprocess
on a free port and returns once the server answers; ``stop_server()`` ends it.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from .flags import VisdomServerFlags
from .flagspec import parse_flags

DEFAULT_PORT = VisdomServerFlags.port
_LOG_TAIL_CHARS = 4000


@dataclass(frozen=True)
class VisdomServerConfig:
    """python -m guided_diffusion.util.visdom_server"""

    server: VisdomServerFlags

__all__ = ["DEFAULT_PORT", "find_free_port", "main", "server_answers", "start_server", "stop_server"]


def main(argv: list[str] | None = None) -> int:
    """Parse flags and serve until interrupted. Returns the exit status."""
    args = parse_flags(VisdomServerConfig, argv, "Start a Visdom server for live monitoring, without visdom's "
                       "internet download step.", prog="python -m guided_diffusion.util.visdom_server").server

    try:
        import visdom
        from visdom.server import run_server
    except ImportError as exc:
        print(
            f"error: cannot start a Visdom server: {exc}. Install it with `pip install -e '.[visdom]'`.",
            file=sys.stderr,
        )
        return 1

    logging.basicConfig(level=args.logging_level, format="%(asctime)s %(levelname)s %(message)s")
    env_path = os.path.abspath(os.path.expanduser(args.env_path))
    os.makedirs(env_path, exist_ok=True)

    assets_marker = os.path.join(os.path.dirname(visdom.__file__), "static", "version.built")
    if args.download_assets:
        try:
            run_server.download_scripts()
        except Exception as exc:  # offline: the API still works, only the page lacks its scripts
            logging.warning("could not download the page's scripts (%s); serving without them", exc)
    elif not os.path.exists(assets_marker):
        print(
            "note: the page's JavaScript/CSS are not installed, so the browser page stays blank "
            "(the HTTP API works). Run once with --download_assets on a machine with internet.",
            file=sys.stderr,
        )

    host = "0.0.0.0" if args.bind_all else "127.0.0.1"
    print(f"Visdom server at http://{host}:{args.port} (environments in {env_path}); Ctrl-C stops it.", flush=True)
    try:
        # bind_local is what makes tornado listen on 127.0.0.1 only; hostname is just printed.
        # base_url "" serves the API at /events, /win_data, ...: start_server's default "/"
        # would route them under "//" (visdom's own main() makes the same replacement).
        run_server.start_server(
            port=args.port,
            hostname=host,
            base_url="",
            env_path=env_path,
            bind_local=not args.bind_all,
            print_func=lambda port: None,
        )
    except KeyboardInterrupt:
        pass
    return 0


def find_free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR, as tornado sets it: a port left in TIME_WAIT counts as free,
        # one with a listener does not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def server_answers(port: int, host: str = "127.0.0.1", timeout: float = 1.0) -> bool:
    """True if a Visdom server at ``host:port`` answers its ``/env_state`` API call."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
    request = urllib.request.Request(f"http://{host}:{port}/env_state", data=b"{}", method="POST")
    try:
        with opener.open(request, timeout=timeout) as response:
            return isinstance(json.loads(response.read()), list)
    except (OSError, ValueError):  # refused, timed out, HTTP error, not JSON
        return False


def start_server(
    port: int | None = None, env_path: str | os.PathLike | None = None, timeout: float = 30.0
) -> tuple[subprocess.Popen, int]:
    """Start ``python -m guided_diffusion.util.visdom_server`` in a subprocess and wait until it answers.

    :param port: port to use; None picks a free one (retrying if another process takes
        it first).
    :param env_path: Visdom's environment folder; None uses a temporary folder that
        ``stop_server`` deletes.
    :param timeout: seconds to wait for the server to answer.
    :return: ``(process, port)``. Pass the process to ``stop_server``.
    :raises RuntimeError: ``port`` is in use, or the server exited (its output is in
        the message).
    :raises TimeoutError: it did not answer within ``timeout`` seconds.
    """
    if port is not None and not _port_is_free(int(port)):
        raise RuntimeError(f"cannot start a Visdom server on port {port}: the port is already in use")
    attempt = 0
    while True:
        attempt += 1
        chosen = find_free_port() if port is None else int(port)
        process = _launch(chosen, env_path)
        try:
            _wait_until_answers(process, chosen, timeout)
            return process, chosen
        except RuntimeError:
            stop_server(process)
            if port is not None or attempt >= 3:  # a free port can be taken before the server binds it
                raise
        except BaseException:
            stop_server(process)
            raise


def stop_server(process: subprocess.Popen, timeout: float = 5.0) -> None:
    """End a server from ``start_server`` and delete its temporary folder, if it made one."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    log = getattr(process, "visdom_log", None)
    if log is not None:
        log.close()
    temp_dir = getattr(process, "visdom_temp_dir", None)
    if temp_dir is not None:
        shutil.rmtree(temp_dir, ignore_errors=True)


def _launch(port: int, env_path: str | os.PathLike | None) -> subprocess.Popen:
    temp_dir = None
    if env_path is None:
        temp_dir = env_path = tempfile.mkdtemp(prefix="visdom-env-")
    # The child imports this very copy of the package, installed or not.
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, child_env.get("PYTHONPATH")) if p)
    # Output goes to an unnamed file, not a pipe: nobody reads a pipe while the server runs.
    log = tempfile.TemporaryFile()
    command = [
        sys.executable, "-m", "guided_diffusion.util.visdom_server",
        "--port", str(port), "--env_path", os.fspath(env_path),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=child_env
    )
    process.visdom_log = log  # for stop_server and error messages
    process.visdom_temp_dir = temp_dir
    return process


def _wait_until_answers(process: subprocess.Popen, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not server_answers(port):
        if process.poll() is not None:
            raise RuntimeError(
                f"the Visdom server for port {port} exited with status {process.returncode}:\n"
                f"{_log_tail(process)}"
            )
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the Visdom server for port {port} did not answer within {timeout} s:\n{_log_tail(process)}"
            )
        time.sleep(0.05)


def _log_tail(process: subprocess.Popen) -> str:
    log = process.visdom_log
    log.flush()
    log.seek(0)
    return log.read().decode("utf-8", "replace")[-_LOG_TAIL_CHARS:]


if __name__ == "__main__":
    sys.exit(main())
