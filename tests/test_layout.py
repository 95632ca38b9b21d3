"""The package's layout holds: every module in a sub-package named for its concern (or one of
the root modules), imports only downward through the layers, no module above 350 lines."""

from __future__ import annotations

import ast

from pixword_lit.system.config import REPO_ROOT

PKG = REPO_ROOT / "pixword_lit"
# bottom to top: a module may import its own layer and the layers below, never above
LAYERS = [
    {"pixword_lit.errors", "pixword_lit.files", "pixword_lit.provenance"},
    {"pixword_lit.model"}, {"pixword_lit.data"}, {"pixword_lit.system"}, {"pixword_lit.infer"},
    {"pixword_lit.fit"}, {"pixword_lit.grid"}, {"pixword_lit.bench"},
    {"pixword_lit.cli", "pixword_lit"},  # the CLI and the package's public face (lazy imports)
]
MAX_LINES = 350


def layer_of(module: str) -> int:
    """The layer of a dotted module name: its own entry, else its sub-package's."""
    for name in (module, ".".join(module.split(".")[:2])):
        for i, layer in enumerate(LAYERS):
            if name in layer:
                return i
    raise AssertionError(f"{module} sits in no layer: put it in a sub-package named for its concern")


def modules():
    for path in sorted(PKG.rglob("*.py")):
        name = ".".join(("pixword_lit", *path.with_suffix("").relative_to(PKG).parts))
        yield name.removesuffix(".__init__"), path


def imports_of(path) -> set[str]:
    """Every pixword_lit module a file imports, at module level or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pixword_lit"):
            if node.module == "pixword_lit":  # from pixword_lit import files
                out |= {f"pixword_lit.{a.name}" for a in node.names}
            else:
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("pixword_lit")}
    return out


def upward_imports() -> list[str]:
    bad = []
    for name, path in modules():
        for dep in sorted(imports_of(path)):
            if layer_of(dep) > layer_of(name):
                bad.append(f"{name} imports {dep}")
    return bad


def test_every_module_sits_in_a_layer_and_imports_only_downward():
    assert upward_imports() == []
    # the rule can fail: fit above infer, so an infer module importing fit is upward
    assert layer_of("pixword_lit.fit.train") > layer_of("pixword_lit.infer.captions")
    assert layer_of("pixword_lit.model.pixword") < layer_of("pixword_lit.data.stream")


def test_the_check_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from pixword_lit.grid.launch import run_grid\n"
                 "from pixword_lit import files\n")
    assert imports_of(f) == {"pixword_lit.grid.launch", "pixword_lit.files"}


def test_no_module_is_above_the_line_limit():
    long = {name: n for name, path in modules() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}
