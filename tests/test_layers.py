"""The package's shape: imports flow one way, nothing imports the demo, and the command line is light.

Layers (../shared/docs/style.md): config -> model -> checkpoint -> inference -> {serving, evaluation,
bench}; processing -> {inference, training, serving}. `ALLOWED` says which other parts of owl3 each part may
import (at module level or inside a function: a dependency is one wherever it is written). Module-level
imports must not form a cycle.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "owl3"
BASE = {"errors", "lazy"}  # importable from anywhere
CORE = BASE | {"config", "model", "checkpoint", "processing", "inference"}
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "lazy": set(),
    "config": BASE,
    "model": BASE | {"config"},
    "checkpoint": BASE | {"config", "model"},
    "processing": BASE | {"config"},
    "inference": CORE,
    "conversation": CORE,  # what a request to the pipeline is and what it returns
    "api": CORE | {"kb", "conversation"},  # pipe.chat(..., kb=KB) hands the answer to kb.answer
    "options": BASE | {"api"},
    "generate": BASE | {"options", "api", "kb"},
    "kb": CORE,  # knowledge bases: take a pipeline as an argument, never import api
    "training": CORE,
    "train": BASE | {"training"},
    "evaluation": CORE | {"api", "options"},
    "bench": CORE | {"api", "options", "evaluation"},
    "serving": CORE | {"api", "options", "kb"},
    "demo": CORE | {"api", "options", "evaluation", "training", "bench"},
    "cli": BASE,  # the command table names its modules as strings
    "__init__": BASE,
}


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(path: Path, names: set[str], top_only: bool) -> set[str]:
    """The owl3 modules `path` imports (module-level statements only with `top_only`)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_only else list(ast.walk(tree))
    if top_only:  # module level includes `if`/`try` blocks, not functions or classes
        stack, nodes = list(nodes), []
        while stack:
            n = stack.pop()
            nodes.append(n)
            if isinstance(n, (ast.If, ast.Try)):
                stack += n.body + n.orelse + getattr(n, "handlers", []) + getattr(n, "finalbody", [])
            elif isinstance(n, ast.ExceptHandler):
                stack += n.body
    found = set()
    for n in nodes:
        if isinstance(n, ast.Import):
            found |= {a.name for a in n.names if a.name.split(".")[0] == "owl3"}
        elif isinstance(n, ast.ImportFrom) and n.module and n.module.split(".")[0] == "owl3" and not n.level:
            for a in n.names:  # `from owl3.model import hyper` names a module
                sub = f"{n.module}.{a.name}"
                found.add(sub if sub in names else n.module)
    return found


def part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_part_of_the_package_is_in_the_layer_table():
    assert {part(m) for m in modules()} <= set(ALLOWED)


def test_imports_follow_the_layers_and_nothing_imports_the_demo():
    mods = modules()
    bad = []
    for name, path in mods.items():
        src = part(name)
        for target in imports(path, set(mods), top_only=False):
            dst = part(target)
            if dst != src and dst not in ALLOWED[src]:
                bad.append(f"{name} imports {target} ({src} may not import {dst})")
    assert not bad, "\n".join(bad)


def test_no_import_cycles_at_module_level():
    mods = modules()
    graph = {name: imports(path, set(mods), top_only=True) - {name} for name, path in mods.items()}
    state: dict[str, int] = {}  # 1 on the path, 2 done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(path[path.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_a_cycle_and_a_layer_break(tmp_path):
    # the walker itself: a module-level cycle and a wrong-way import in a made-up package are found
    pkg = tmp_path / "owl3"
    (pkg / "model").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "model" / "__init__.py").write_text("from owl3.model.a import x\n")
    (pkg / "model" / "a.py").write_text("from owl3.model import b\nx = 1\n")
    (pkg / "model" / "b.py").write_text("import owl3.model.a\n\ndef f():\n    from owl3.api import load\n")
    names = {"owl3", "owl3.model", "owl3.model.a", "owl3.model.b", "owl3.api"}
    assert imports(pkg / "model" / "a.py", names, top_only=True) == {"owl3.model.b"}
    assert imports(pkg / "model" / "b.py", names, top_only=True) == {"owl3.model.a"}
    assert "owl3.api" in imports(pkg / "model" / "b.py", names, top_only=False)
    assert "api" not in ALLOWED[part("owl3.model.b")]


COMMANDS = ["", "generate", "encode", "chat", "bench", "bench latency", "bench video", "bench memory",
            "bench serve", "eval", "eval synthetic",
            "eval compare", "eval mmbench", "eval distractor", "eval nlvr2", "eval videomme", "eval mvbench",
            "eval longvideobench", "eval merge", "demo", "demo-train", "train", "build", "serve", "kb",
            "kb build", "kb add", "kb search", "kb info"]  # fmt: skip


@pytest.mark.parametrize("command", COMMANDS)
def test_help_imports_neither_torch_nor_pil(command):
    code = (
        "import sys\n"
        "from owl3 import cli\n"
        "try:\n"
        f"    cli.main({command.split()!r} + ['--help'])\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0, e.code\n"
        "heavy = [m for m in ('torch', 'PIL', 'av', 'tokenizers', 'numpy') if m in sys.modules]\n"
        "print(heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
