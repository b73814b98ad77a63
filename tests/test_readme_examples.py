"""The README's Python examples run as written (issue 17): every ```python block of
README.md is executed, in order of appearance, in a fresh namespace, from a scratch
directory holding a link to the repository's ``experiments/`` (the README's paths are
relative to the repository root). Every file path the block names as a string literal
(``"r.json"``, ``"maps/"``, ``"qkv.png"`` ...) must exist afterwards, and JSON it wrote must
be strict JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
PATH_LITERAL = re.compile(r"""["']([\w./-]+(?:\.(?:json|png|parquet|csv|npy)|/))["']""")


def python_blocks() -> list[tuple[int, str]]:
    text = README.read_text(encoding="utf-8")
    return [(text[: m.start()].count("\n") + 1, m.group(1)) for m in BLOCK.finditer(text)]


def test_the_readme_has_python_examples():
    assert len(python_blocks()) >= 2


@pytest.mark.parametrize(
    "line, code", python_blocks(), ids=[f"line{n}" for n, _ in python_blocks()]
)
def test_readme_python_example_runs(line, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__main__"})
    named = PATH_LITERAL.findall(code)
    assert named, "the example names no output file to check"
    for rel in named:
        p = tmp_path / rel
        assert p.exists(), f"README.md:{line} names {rel!r}, which was not written"
        if p.suffix == ".json":
            json.loads(p.read_text(), parse_constant=lambda c: pytest.fail(f"{rel}: bare {c}"))
