"""Importing the package has no side effects (SPEC section 10, STYLE 'No import-time side effects')."""
import os
import pkgutil
import subprocess
import sys

import guided_diffusion

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = sorted(m.name for m in pkgutil.walk_packages(guided_diffusion.__path__, "guided_diffusion.")
                 if not m.name.endswith("__main__"))


def test_import_every_module_quietly():
    code = (
        "import os, sys, socket\n"
        "calls = []\n"
        "orig = socket.socket.connect\n"
        "socket.socket.connect = lambda self, *a: calls.append(a) or orig(self, *a)\n"
        "path_before = list(sys.path)\n"
        f"for name in {MODULES!r}:\n"
        "    __import__(name)\n"
        "assert sys.path == path_before, 'sys.path edited'\n"
        "assert not calls, calls\n"
        "heavy = [m for m in ('visdom', 'mpi4py', 'tqdm', 'nibabel', 'sklearn', 'matplotlib') if m in sys.modules]\n"
        "print('LOADED', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                          env={k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.strip().splitlines()
    assert out[-1].startswith("LOADED"), out
    assert len(out) == 1, f"import printed: {out[:-1]}"
    assert proc.stderr == ""
    loaded = eval(out[-1][len("LOADED "):])
    assert "visdom" not in loaded and "mpi4py" not in loaded
    # loaded where used: each adds a fraction of a second to every process the scripts and the tests start
    assert "sklearn" not in loaded and "matplotlib" not in loaded
