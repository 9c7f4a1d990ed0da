"""Load YAML keeping where each key and value came from, so errors can name file, line and column."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from runner.errors import SpecError, SpecProblem

Loc = tuple[str | int, ...]


@dataclass
class Located:
    """Plain YAML data plus a map from key path to its (line, column), both 1-based."""

    file: Path
    data: Any
    positions: dict[Loc, tuple[int, int]] = field(default_factory=dict)

    def position(self, loc: Loc) -> tuple[int | None, int | None]:
        """Position of `loc`, or of its nearest ancestor that has one."""
        for n in range(len(loc), -1, -1):
            pos = self.positions.get(loc[:n])
            if pos is not None:
                return pos
        return (None, None)

    def problem(self, loc: Loc, message: str) -> SpecProblem:
        line, col = self.position(loc)
        return SpecProblem(self.file, line, col, format_loc(loc), message)


def format_loc(loc: Loc) -> str:
    """('resources', 'gpus', 1) -> 'resources.gpus[1]'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def parse_yaml(text: str, file: Path) -> Located:
    """Parse one YAML document; a syntax error or a duplicate key is a SpecError with its position."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else None
        col = mark.column + 1 if mark else None
        msg = f"YAML syntax error: {e.problem or e}"
        if e.context:
            msg += f" ({e.context})"
        raise SpecError([SpecProblem(file, line, col, "", msg)]) from e
    except yaml.YAMLError as e:
        raise SpecError([SpecProblem(file, None, None, "", f"YAML error: {e}")]) from e
    finally:
        loader.dispose()
    located = Located(file, data)
    problems: list[SpecProblem] = []
    if node is not None:
        _walk(node, (), located.positions, problems, file)
    if problems:
        raise SpecError(problems)
    return located


def load_yaml(path: Path) -> tuple[str, Located]:
    """Read and parse a job file; returns the text as written and the located data."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError([SpecProblem(path, None, None, "", f"cannot read the job file: {e.strerror}")]) from e
    return text, parse_yaml(text, path)


def _walk(
    node: yaml.Node, loc: Loc, positions: dict[Loc, tuple[int, int]], problems: list[SpecProblem], file: Path
) -> None:
    positions[loc] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                where = format_loc((*loc, key))
                problems.append(
                    SpecProblem(file, line, key_node.start_mark.column + 1, where,
                                f"duplicate key (first at line {seen[key]}); YAML would silently keep the last one")
                )
            seen[key] = line
            _walk(value_node, (*loc, key), positions, problems, file)
            # A key's own position beats its value's: errors about a key point at the key.
            positions[(*loc, key)] = (line, key_node.start_mark.column + 1)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*loc, i), positions, problems, file)
