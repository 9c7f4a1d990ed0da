"""The code's shape, as the architecture asks: small functions (none over 80 lines in runner/, policies/,
robot/), so each does one thing and reads on one screen."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIMIT = 80


def test_no_function_is_over_80_lines() -> None:
    long = []
    files = [p for pkg in ("runner", "policies", "robot") for p in sorted((REPO / pkg).rglob("*.py"))]
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno is not None:
                lines = node.end_lineno - node.lineno + 1
                if lines > LIMIT:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []
    assert len(files) > 80  # the scan saw the packages
