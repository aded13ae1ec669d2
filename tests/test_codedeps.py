"""The static import graph behind every rule's code inputs, against what Python actually imports."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO
from opposites import codedeps
from opposites.analyses import ANALYSES

PACKAGE = REPO / "src/opposites"


FORKED_IMPORTS = """
import importlib, json, os, sys
import torch, transformers, transformer_lens, pandas, matplotlib  # third-party, loaded once before forking
out = {}
for name in sys.argv[1:]:
    read, write = os.pipe()
    if os.fork() == 0:  # a child imports one module of the package into an otherwise fresh package state
        importlib.import_module(name)
        files = [m.__file__ for n, m in list(sys.modules.items()) if n.split(".")[0] == "opposites" and getattr(m, "__file__", None)]
        os.write(write, json.dumps(files).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        out[name] = json.loads(f.read())
    os.wait()
print(json.dumps(out))
"""


def modules_loaded_by_importing(names: list[str]) -> dict[str, set[Path]]:
    """{module: the package's modules a fresh import of it loads}, each imported in its own forked child."""
    proc = subprocess.run([sys.executable, "-c", FORKED_IMPORTS, *names], capture_output=True, text=True, check=True, cwd=REPO)
    return {k: {Path(p).resolve() for p in v} for k, v in json.loads(proc.stdout.splitlines()[-1]).items()}


def test_the_closure_holds_every_module_an_import_loads():
    """Importing any module of the package loads nothing its closure lacks (an independent oracle:
    the interpreter itself)."""
    files = {".".join(("opposites", *m.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__"): m
             for m in sorted(PACKAGE.rglob("*.py"))}
    loaded = modules_loaded_by_importing(list(files))
    assert len(loaded) == len(files) > 40
    for name, module in files.items():
        assert loaded[name] <= set(codedeps.closure([module])), (name, loaded[name] - set(codedeps.closure([module])))


def test_imports_inside_functions_and_relative_package_paths_count():
    figures = codedeps.closure([REPO / "scripts/render_figure.py"])
    assert PACKAGE / "figures/style.py" in figures  # imported inside figures.render
    assert PACKAGE / "io.py" in figures and REPO / "scripts/_common.py" in figures
    assert PACKAGE / "figures/dla.py" not in figures  # a section module joins only its own figures' rules
    circuits = codedeps.closure([REPO / "scripts/analyze.py", ANALYSES["circuit"].module])
    assert {PACKAGE / "patching/edges.py", PACKAGE / "patching/engine.py", PACKAGE / "stats.py",
            PACKAGE / "analyses/acdc.py", PACKAGE / "patching/__init__.py"} <= set(circuits)


def test_data_files_follow_the_strings_that_name_them():
    prompts = codedeps.closure([PACKAGE / "prompts.py"])
    names = {p.relative_to(PACKAGE).as_posix() for p in codedeps.data_files(prompts, ["size"])}
    assert names == {"tasks/size.yaml", "tasks.schema.yaml"}
    models = codedeps.closure([PACKAGE / "models.py"])
    assert "data/gpt2_head_classes.yaml" not in {p.relative_to(PACKAGE).as_posix() for p in codedeps.data_files(models, [])}


def test_the_code_hash_depends_on_contents_not_on_where_the_checkout_lies(tmp_path):
    files = [PACKAGE / "io.py", PACKAGE / "paths.py"]
    assert codedeps.code_hash(files) == codedeps.code_hash(list(reversed(files)))
    assert codedeps.code_hash(files) != codedeps.code_hash(files[:1])
