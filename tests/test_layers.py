"""The package's layers: no module imports a layer above its own (README, "Layout").

    util/                                    0  errors, files, checkpoints, processes, logs, Visdom, flags
    gaussian_diffusion, unet, ... (the top)  1  the maths and the networks (SPEC section 4)
    datasets/, evaluation/, methods/         2  beside each other: none imports another
    pipeline/                                3  runs things from configs
    scripts/                                 4  thin entry points
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "guided_diffusion"
LAYERS = {"util": 0, "datasets": 2, "evaluation": 2, "methods": 2, "pipeline": 3}
CORE = 1


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


def violations(path: Path, root: Path = PACKAGE) -> list[str]:
    source = module_name(path, root)
    rank, sub = layer_of(source)
    out = []
    for line, target in imports_of(path, root):
        t_rank, t_sub = layer_of(target)
        if t_rank > rank or (t_rank == rank == 2 and t_sub != sub):
            out.append(f"{path.relative_to(root.parent)}:{line}: {source} (layer {rank}, {sub}) imports "
                       f"{target} (layer {t_rank}, {t_sub})")
    return out


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=[str(p.relative_to(PACKAGE)) for p in MODULES])
def test_no_module_imports_a_layer_above_its_own(path):
    assert not violations(path), "\n".join(violations(path))


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
