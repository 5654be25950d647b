"""README.md's examples run as written (issue 18, item 12).

Every ```python block runs on CPU, in a fresh namespace (so each block must define what it uses), with
one substitution: the device string "cuda" becomes "cpu", so the GPU examples run on a machine without
one. Every `gmk info` line of a ```bash block runs too (as ``python -m gmkernels``).
"""
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(language: str) -> list[tuple[int, str]]:
    """(first line number, code) of every ```language block of README.md."""
    text = README.read_text()
    return [(text.count("\n", 0, match.start(2)) + 1, match.group(2))
            for match in FENCE.finditer(text) if match.group(1) == language]


def gmk_info_commands() -> list[list[str]]:
    return [line.split("#")[0].split() for _, code in blocks("bash") for line in code.splitlines()
            if line.split()[:2] == ["gmk", "info"]]


@pytest.mark.parametrize("line, code", [pytest.param(line, code, id=f"line{line}") for line, code in blocks("python")])
def test_python_block_runs(line, code):
    """The block, its "cuda" devices made "cpu"; a traceback names README.md's own line numbers."""
    source = "\n" * (line - 1) + code.replace('"cuda"', '"cpu"')
    exec(compile(source, str(README), "exec"), {"__name__": "readme_example"})  # noqa: S102


def test_readme_has_examples():
    assert blocks("python"), "README.md has no ```python block"
    assert gmk_info_commands(), "README.md shows no `gmk info` in a ```bash block"


@pytest.mark.parametrize("command", gmk_info_commands(), ids=" ".join)
def test_gmk_info_runs(command):
    result = subprocess.run([sys.executable, "-m", "gmkernels", *command[1:]], capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert "backends cpu" in result.stdout, result.stdout
