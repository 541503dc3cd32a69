"""Imports run one way: spec.py is a leaf (torch alone), contract.py imports torch and spec.py
alone, and the kernels below ops.py (the Triton launchers, which ops.py imports on first use)
never import ops.py."""

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
    assert {m for m in _imports(PACKAGE / "spec.py") if m.startswith("gated_kernels")} == set()
    package = {m for m in _imports(PACKAGE / "contract.py") if m.startswith("gated_kernels")}
    assert package <= {"gated_kernels.spec", "gated_kernels.spec.CELLS"}, package


def test_the_kernels_do_not_import_ops():
    kernels = (PACKAGE / "triton_kernels").glob("*.py")
    importers = [p.name for p in kernels if "gated_kernels.ops" in _imports(p)]
    assert not importers, importers
