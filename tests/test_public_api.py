"""The declared public surface (httpx-style): adding or removing a name is a decision."""

import subprocess
import sys

import dscore

PUBLIC = [
    "DscoreError", "Field", "JobSpec", "ModelSpec", "Scorer", "Vocabulary", "__version__",
    "bucket_index", "encode", "hash_token", "run",
]  # fmt: skip


def test_exported_members():
    assert dscore.__all__ == PUBLIC
    assert sorted(dir(dscore)) == PUBLIC
    for name in dscore.__all__:
        assert getattr(dscore, name) is not None
    assert issubclass(dscore.DscoreError, Exception)


def test_no_other_public_name_at_module_level():
    """A public name defined in dscore/__init__.py but left out of ``__all__`` (and this
    list) fails here too: everything public goes through the pinned list."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(dscore))
    bound = set()
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        bound |= {t.id for t in targets if isinstance(t, ast.Name)}
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            bound.add(node.name)
    public = {n for n in bound if not n.startswith("_")}
    assert public <= set(PUBLIC), public - set(PUBLIC)


def test_import_is_light():
    """`dask worker` imports dscore.cli via the dask_cli entry point: no numba/torch there."""
    code = "import sys, dscore.cli; print(sorted(m for m in ('numba', 'torch', 'pyarrow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
