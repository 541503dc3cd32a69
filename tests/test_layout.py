"""Imports run one way: spec.py and contract.py are leaves (no module of the package), and the
kernels below ops.py (the Triton launchers, which ops.py imports on first use) never import
ops.py."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "gated_kernels"


def _imports(path):
    """The modules a file imports, by their full names."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_spec_and_contract_are_leaves():
    for leaf in ("spec.py", "contract.py"):
        package = {m for m in _imports(PACKAGE / leaf) if m.startswith("gated_kernels")}
        assert not package, (leaf, package)


def test_the_kernels_do_not_import_ops():
    kernels = (PACKAGE / "triton_kernels").glob("*.py")
    importers = [p.name for p in kernels if "gated_kernels.ops" in _imports(p)]
    assert not importers, importers
