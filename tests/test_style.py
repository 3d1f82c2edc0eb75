"""The one-house rules that a reader relies on: no duplicated code, an importable package."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT


MIN_LINES = 6  # pylint's duplicate-code rule at --min-similarity-lines=6, on the stdlib's ast (pylint's
# astroid parse of every module took 131 s of the suite's 712; this takes well under a second)


def code_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of a module's lines that say something, as pylint's duplicate-code
    check compares them: comments, docstrings, imports and function signatures left out, and lines
    without a word character (a lone bracket) dropped, so a block is found whatever brackets sit in it."""
    src = path.read_text()
    skip: set[int] = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            skip.update(range(node.lineno, node.end_lineno + 1))
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            skip.update(range(node.lineno, node.body[0].lineno))
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(getattr(first.value, "value", None), str):
                skip.update(range(first.lineno, first.end_lineno + 1))
    lines = ((n, line.split("#", 1)[0].strip()) for n, line in enumerate(src.splitlines(), 1))
    return [(n, text) for n, text in lines if n not in skip and re.search(r"\w", text)]


def duplicated_blocks(paths, min_lines: int = MIN_LINES) -> list[str]:
    """Every run of `min_lines` code lines found in two different files, as 'a.py:12 = b.py:40'."""
    first_seen, found = {}, []
    for path in paths:
        lines = code_lines(path)
        for i in range(len(lines) - min_lines + 1):
            key = tuple(text for _, text in lines[i:i + min_lines])
            where = (path, lines[i][0])
            seen = first_seen.setdefault(key, where)
            if seen[0] != path:
                found.append(f"{seen[0].relative_to(ROOT) if seen[0].is_relative_to(ROOT) else seen[0]}:{seen[1]} = "
                             f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{where[1]}")
    return found


def project_modules() -> list[Path]:
    return sorted(p for d in ("dacd", "train", "bench") for p in (ROOT / d).rglob("*.py")) + [ROOT / "app.py"]


def test_no_duplicated_code():
    """No block of six code lines appears in two of the project's modules."""
    assert len(project_modules()) > 30
    assert not duplicated_blocks(project_modules())


def test_the_duplicate_check_finds_a_copied_block_and_ignores_what_pylint_ignores(tmp_path):
    body = "\n".join(f"    total = total + {i}  # step {i}" for i in range(6))
    a, b, c = tmp_path / "a.py", tmp_path / "b.py", tmp_path / "c.py"
    a.write_text(f'"""Module a."""\nimport os\n\n\ndef f(total):\n{body}\n    return total\n')
    b.write_text(f"def g(total,\n      other=None):\n    \"\"\"Another name.\"\"\"\n{body.replace('# step', '# note')}\n"
                 "    return total\n")
    found = duplicated_blocks([a, b])  # its comments differ, its signature spans two lines: still a copy
    assert [x.split(" = ")[1] for x in found] == [f"{b}:4", f"{b}:5"]  # seven code lines: two windows of six
    assert found[0].split(" = ")[0] == f"{a}:6"
    c.write_text("import os\nimport sys\nimport re\nimport ast\nimport json\nimport math\n")
    d = tmp_path / "d.py"
    d.write_text("import os\nimport sys\nimport re\nimport ast\nimport json\nimport math\n")
    assert duplicated_blocks([c, d]) == []  # imports are not code to share
    assert duplicated_blocks([a, a]) == []  # within one file: not this check's business (nor pylint's)


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
