"""The import direction of the package (docs/architecture.md, "Layers"): cli -> jobs -> engine and
the library modules -> models, data, ops. Every module under mgnet/ (and kernels/, installed as
mgnet.kernels) is read with ast, imports inside functions included, so a circle cannot hide in a
function body."""
import ast
import importlib
from pathlib import Path

import pytest

from mgnet import cli

ROOT = Path(__file__).resolve().parents[1]
FOUNDATION = ("mgnet.models", "mgnet.data", "mgnet.ops", "mgnet.kernels")
ABOVE_ENGINE = ("mgnet.training", "mgnet.evaluation", "mgnet.inference")
LEAVES = ("mgnet.faults",)  # import nothing of mgnet, so any layer may call them (progress points)


def _module_name(path: Path) -> str:
    if path.is_relative_to(ROOT / "kernels"):
        parts = ("mgnet", "kernels") + path.relative_to(ROOT / "kernels").with_suffix("").parts
    else:
        parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> set:
    """Every mgnet module that ``source`` (the text of ``module``) imports, anywhere in the file;
    relative imports resolved, ``from pkg import name`` counted as pkg.name as well as pkg."""
    package = module if is_package else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)
    return {m for m in found if m == "mgnet" or m.startswith("mgnet.")}


def _graph() -> dict:
    files = sorted((ROOT / "mgnet").rglob("*.py")) + sorted((ROOT / "kernels").rglob("*.py"))
    graph = {}
    for f in files:
        name = _module_name(f)
        graph[name] = imported_modules(f.read_text(), name, f.name == "__init__.py")
    return graph


def _under(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


GRAPH = _graph()


def test_walker_sees_function_level_and_relative_imports():
    src = ("from . import engine\nfrom ..ops import lka3d\n"
           "def f():\n    import mgnet.jobs.train\n    from mgnet.jobs import score\n")
    got = imported_modules(src, "mgnet.models.x")
    assert {"mgnet.models.engine", "mgnet.ops", "mgnet.ops.lka3d", "mgnet.jobs.train", "mgnet.jobs",
            "mgnet.jobs.score"} <= got
    assert "mgnet.jobs" in imported_modules("from .jobs import train\n", "mgnet", is_package=True)


def test_the_walk_covers_the_package():
    assert {"mgnet.engine", "mgnet.training", "mgnet.jobs.train", "mgnet.ops.backends", "mgnet.kernels.lka3d"} <= set(GRAPH)


def test_no_library_module_imports_a_job():
    bad = {m: sorted(i for i in imps if _under(i, ("mgnet.jobs", "mgnet.cli")))
           for m, imps in GRAPH.items() if not _under(m, ("mgnet.jobs", "mgnet.cli"))}
    assert not {m: v for m, v in bad.items() if v}


def test_jobs_never_import_each_other_nor_the_cli():
    jobs = [m for m in GRAPH if m.startswith("mgnet.jobs.")]
    bad = {m: sorted(i for i in GRAPH[m] if _under(i, ("mgnet.jobs", "mgnet.cli")) and i != "mgnet.jobs")
           for m in jobs}
    assert not {m: v for m, v in bad.items() if v}


def test_foundation_never_imports_upwards():
    """models, data, ops and kernels import only each other: never the engine, the library
    modules above them, the run folder or the report."""
    bad = {m: sorted(i for i in imps if not _under(i, FOUNDATION + LEAVES) and i != "mgnet")
           for m, imps in GRAPH.items() if _under(m, FOUNDATION)}
    assert not {m: v for m, v in bad.items() if v}
    assert not {m: GRAPH[m] for m in LEAVES if GRAPH[m] - {"mgnet"}}


def test_engine_sits_below_the_library_modules():
    assert not {i for i in GRAPH["mgnet.engine"] if _under(i, ABOVE_ENGINE)}


@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_is_a_job_module(command):
    path, summary, status = cli.COMMANDS[command]
    assert path.startswith("mgnet.jobs.") and summary and status in (1, 2)
    job = importlib.import_module(path)
    assert callable(job.main) and job.usage().strip()
