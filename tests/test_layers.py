"""The package's layers: no module imports a layer above its own (README, "Layout").

    util/                                    0  errors, files, checkpoints, processes, logs, Visdom, flags
    gaussian_diffusion, unet, ... (the top)  1  the maths and the networks (SPEC section 4)
    datasets/, evaluation/, baselines/       2  beside each other: none imports another
    pipeline/                                3  runs things from configs, in ranks of its own (PIPELINE_RANKS):
                                                engines below the script runs, the methods, tune.py's search,
                                                bundles and detection above them, the driver on top
    scripts/                                 4  thin entry points

Beyond the ranks: no import cycle between modules, ``importlib.import_module`` is judged like an
import, and no library module launches a file of ``scripts/`` as a process.
"""
import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "guided_diffusion"
LAYERS = {"util": 0, "datasets": 2, "evaluation": 2, "baselines": 2, "pipeline": 3}
CORE = 1
PIPELINE_RANKS = {
    # engines: devices, the training scaffold and its pieces, the translation loop and its translators
    "devices": 0, "presets": 0, "train": 0, "translate": 0, "translators": 0, "networks": 0, "pieces": 0, "settings": 0,
    "cli": 0,
    # what each script runs, from its typed config, and the steps the methods share
    "evaluate": 1, "prepare": 1, "runs": 1,
    # the methods, one module each, and their registry (methods/__init__)
    "methods": 2,
    # searches over runs; a bundle of what a search chose; detection on whole scans with a bundle
    "tune": 3, "bundle": 4, "detect": 5,
    # every command by its script's name; the driver of the example plans, which launches them
    "commands": 6, "driver": 7,
}


def layer_of(module: str) -> tuple[int, str]:
    """(rank, subpackage) of a dotted module name under guided_diffusion."""
    parts = module.split(".")
    if parts[0] != "guided_diffusion":
        raise ValueError(module)
    if len(parts) > 2 and parts[1] in LAYERS:
        return LAYERS[parts[1]], parts[1]
    if len(parts) == 2 and parts[1] in LAYERS:  # the subpackage itself
        return LAYERS[parts[1]], parts[1]
    return CORE, "core"


def module_name(path: Path, package: Path = PACKAGE) -> str:
    relative = path.relative_to(package.parent).with_suffix("")
    parts = list(relative.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, absolute module) of every guided_diffusion import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "guided_diffusion"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "guided_diffusion":
                continue
            # "from . import x" names a module of the package: judge the module, not the package
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                is_module = (root.parent / Path(*candidate.split("."))).with_suffix(".py").exists()
                found.append((node.lineno, candidate if is_module else target))
    return found


def dynamic_imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every ``importlib.import_module("guided_diffusion...")`` / ``__import__``
    with a literal name; a name that is not a literal is reported as ``<dynamic>``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name not in ("import_module", "__import__"):
            continue
        arg = node.args[0] if node.args else None
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            if arg.value.split(".")[0] == "guided_diffusion":
                found.append((node.lineno, arg.value))
        else:
            found.append((node.lineno, "<dynamic>"))
    return found


def pipeline_rank(module: str) -> int | None:
    parts = module.split(".")
    if len(parts) >= 3 and parts[1] == "pipeline":
        return PIPELINE_RANKS.get(parts[2], -1)
    return None


def violations(path: Path, root: Path = PACKAGE) -> list[str]:
    source = module_name(path, root)
    rank, sub = layer_of(source)
    out = []
    where = path.relative_to(root.parent)
    for line, target in imports_of(path, root) + dynamic_imports_of(path):
        if target == "<dynamic>":
            out.append(f"{where}:{line}: {source} imports a module whose name is computed (the layers cannot be checked)")
            continue
        t_rank, t_sub = layer_of(target)
        if t_rank > rank or (t_rank == rank == 2 and t_sub != sub):
            out.append(f"{where}:{line}: {source} (layer {rank}, {sub}) imports {target} (layer {t_rank}, {t_sub})")
        own, theirs = pipeline_rank(source), pipeline_rank(target)
        if own is not None and theirs is not None:
            if -1 in (own, theirs):
                out.append(f"{where}:{line}: {source} or {target} has no rank in PIPELINE_RANKS")
            elif theirs > own:
                out.append(f"{where}:{line}: {source} (pipeline rank {own}) imports {target} (pipeline rank {theirs})")
    return out


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the package's modules it imports (packages' __init__ count as modules)."""
    graph = {}
    for path in sorted(root.rglob("*.py")):
        graph[module_name(path, root)] = {t for _, t in imports_of(path, root) + dynamic_imports_of(path)
                                          if t != "<dynamic>"}
    for targets in graph.values():
        targets &= set(graph)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles of a directed graph, one per strongly connected component with a loop (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


_SCRIPT_PATH = re.compile(r"(^|/)scripts/\w+\.py|^scripts$")


def launches_scripts(path: Path) -> list[str]:
    """Lines of a library module that launch a file of scripts/ as a process: a module that starts
    processes (subprocess, os.exec*, multiprocessing) and names the scripts folder in a literal."""
    text = path.read_text()
    if not re.search(r"\b(subprocess|os\.exec\w*|os\.spawn\w*|os\.system)\b", text):
        return []
    tree = ast.parse(text, filename=str(path))
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)
                  and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)}
    out = []
    for node in ast.walk(tree):
        if id(node) in docstrings:  # prose naming a script launches nothing
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _SCRIPT_PATH.search(node.value):
            out.append(f"{path.name}:{node.lineno}: {node.value!r}")
    return out


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
def test_no_module_imports_a_layer_above_its_own(path):
    assert not violations(path), "\n".join(violations(path))


def test_no_import_cycle():
    assert not cycles(import_graph()), cycles(import_graph())


def test_every_pipeline_module_has_a_rank():
    pipeline = PACKAGE / "pipeline"
    modules = {p.stem for p in pipeline.glob("*.py") if p.stem != "__init__"}
    packages = {p.parent.name for p in pipeline.glob("*/__init__.py")}  # a subpackage has one rank
    assert modules | packages == set(PIPELINE_RANKS)


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
def test_no_library_module_launches_a_script(path):
    assert not launches_scripts(path), launches_scripts(path)


def test_the_checks_see_cycles_ranks_dynamic_imports_and_launched_scripts(tmp_path):
    fake = tmp_path / "guided_diffusion"
    for sub in ("pipeline", "util"):
        (fake / sub).mkdir(parents=True)
    (fake / "util" / "a.py").write_text("from . import b\n")
    (fake / "util" / "b.py").write_text("from .a import x\n")
    (fake / "util" / "c.py").write_text("import importlib\nimportlib.import_module('guided_diffusion.pipeline.runs')\n")
    (fake / "pipeline" / "runs.py").write_text("")
    (fake / "pipeline" / "train.py").write_text("from .runs import x\n")
    (fake / "pipeline" / "mystery.py").write_text("from . import runs\n")
    (fake / "pipeline" / "launch.py").write_text("import subprocess, os\n"
                                                 "subprocess.run(['python', os.path.join('scripts', 'x.py')])\n"
                                                 "subprocess.run(['python', 'scripts/image_train.py'])\n")
    assert cycles(import_graph(fake)) == [["guided_diffusion.util.a", "guided_diffusion.util.b"]]
    assert "imports guided_diffusion.pipeline.runs (layer 3" in violations(fake / "util" / "c.py", fake)[0]
    assert "(pipeline rank 0) imports guided_diffusion.pipeline.runs (pipeline rank 1)" in violations(
        fake / "pipeline" / "train.py", fake)[0]
    assert "has no rank in PIPELINE_RANKS" in violations(fake / "pipeline" / "mystery.py", fake)[0]
    assert len(launches_scripts(fake / "pipeline" / "launch.py")) == 2
    (fake / "pipeline" / "prose.py").write_text('"""Runs what scripts/demo.py runs."""\nimport subprocess\n'
                                                'def f():\n    """Like scripts/tune.py."""\n')
    assert launches_scripts(fake / "pipeline" / "prose.py") == []  # a docstring naming a script launches nothing
    (fake / "util" / "d.py").write_text("import importlib\nname = 'x'\nimportlib.import_module(name)\n")
    assert "name is computed" in violations(fake / "util" / "d.py", fake)[0]
    assert not cycles({"x": {"y"}, "y": set()})


def test_the_check_sees_an_upward_import(tmp_path):
    # a core module importing the pipeline and a data module importing evaluation are both caught
    fake = tmp_path / "guided_diffusion"
    for sub in ("datasets", "pipeline", "evaluation", "util"):
        (fake / sub).mkdir(parents=True)
    (fake / "pipeline" / "runs.py").write_text("")
    (fake / "evaluation" / "results.py").write_text("")
    (fake / "util" / "errors.py").write_text("")
    (fake / "unet.py").write_text("from .pipeline import runs\n")
    (fake / "datasets" / "brats.py").write_text("from ..evaluation.results import save_result\n")
    (fake / "datasets" / "ok.py").write_text("from ..util.errors import UserError\nfrom .. import unet\n")
    assert "imports guided_diffusion.pipeline.runs (layer 3" in violations(fake / "unet.py", fake)[0]
    assert "imports guided_diffusion.evaluation.results (layer 2, evaluation)" in violations(
        fake / "datasets" / "brats.py", fake)[0]
    assert not violations(fake / "datasets" / "ok.py", fake)
