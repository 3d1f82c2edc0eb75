"""The one-house rules that a reader relies on: no duplicated code, an importable package."""

import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.slow
def test_no_duplicated_code():
    """pylint's duplicate-code check over the project's code (Gradio's generated .pyi stubs excluded)."""
    proc = subprocess.run([sys.executable, "-m", "pylint", "--disable=all", "--enable=duplicate-code",
                           "--min-similarity-lines=6", "--ignore-patterns=.*\\.pyi$", "dacd", "train", "bench",
                           "app.py"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


@pytest.mark.slow
def test_package_imports_from_any_directory(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import dacd.pipeline, dacd.defaults; print(dacd.__file__)"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300, env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(ROOT / "dacd" / "__init__.py")


def test_no_sys_path_edits():
    offenders = [str(p.relative_to(ROOT)) for d in ("dacd", "train", "bench", "tests") for p in (ROOT / d).rglob("*.py")
                 if "sys.path.insert" in p.read_text() and p.name != "test_style.py"]
    offenders += ["app.py"] if "sys.path.insert" in (ROOT / "app.py").read_text() else []
    assert not offenders
