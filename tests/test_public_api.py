"""The public names users and README rely on, each checked in a fresh interpreter.

`import jaxprune` must stay light (no JAX: the command line installs its signal
handlers first) and still give every public submodule as an attribute (PEP 562).
"""

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import jaxprune

ROOT = Path(__file__).resolve().parents[1]


def _fresh(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_every_public_submodule_is_an_attribute_after_import_jaxprune():
    on_disk = sorted(m.name for m in pkgutil.iter_modules(jaxprune.__path__) if not m.name.startswith("_"))
    assert {"masks", "models", "data", "training", "study", "report", "runtime", "export", "api",
            "cli"} <= set(on_disk)
    names = sorted({*on_disk, *jaxprune.MOVED})
    got = json.loads(_fresh(f"""
import importlib, json, sys, types, jaxprune
light = "jax" not in sys.modules
import jaxprune.cli  # the command's package: its handlers go in before JAX comes
light_cli = "jax" not in sys.modules
kinds = {{n: isinstance(getattr(jaxprune, n), types.ModuleType) for n in {names!r}}}
# A module that moved is the same module under its old name, however it is imported.
same = {{old: importlib.import_module("jaxprune." + old) is importlib.import_module("jaxprune." + new)
        is getattr(jaxprune, old) for old, new in jaxprune.MOVED.items()}}
print(json.dumps({{"light": light, "light_cli": light_cli, "kinds": kinds, "same": same, "dir": sorted(dir(jaxprune))}}))
"""))
    assert got["light"], "import jaxprune imported JAX"
    assert got["light_cli"], "import jaxprune.cli imported JAX"
    assert got["kinds"] == {n: True for n in names}
    assert got["same"] == {old: True for old in jaxprune.MOVED}
    assert set(names) <= set(got["dir"])


def test_the_names_readme_and_examples_use():
    _fresh("""
import jaxprune
jaxprune.masks.polynomial_sparsity
for n in jaxprune.__all__:
    getattr(jaxprune, n)
jaxprune.models.ResNet18, jaxprune.models.init_variables, jaxprune.models.register
jaxprune.data.register_source, jaxprune.data.register_arrays, jaxprune.data.Dataset
jaxprune.export.export, jaxprune.api.run_study, jaxprune.config.study_preset
jaxprune.paired.difference, jaxprune.checkpoint.RunCheckpoints, jaxprune.modes.register_retraining
import jaxprune.checkpoint, jaxprune.loop, jaxprune.study.modes
from jaxprune import loop, rundir, study, report
study.plan, report.write_report, loop.train_runs, rundir.locked
try:
    jaxprune.no_such_module
except AttributeError as e:
    assert "no_such_module" in str(e)
else:
    raise AssertionError("a missing name must raise AttributeError")
""")
