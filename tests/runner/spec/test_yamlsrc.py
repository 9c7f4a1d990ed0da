from pathlib import Path

import pytest

from runner.errors import SpecError
from runner.spec.yamlsrc import format_loc, parse_yaml


def test_syntax_error_names_file_line_and_column() -> None:
    with pytest.raises(SpecError) as e:
        parse_yaml("name: x\nsteps:\n  train: [1, 2\n", Path("jobs/x.yaml"))
    p = e.value.problems[0]
    assert (str(p.file), p.line) == ("jobs/x.yaml", 4)
    assert p.column is not None
    assert "YAML syntax error" in str(e.value)


def test_duplicate_keys_are_refused_with_both_lines() -> None:
    with pytest.raises(SpecError, match=r"x.yaml:3:1: name: duplicate key \(first at line 1\)"):
        parse_yaml("name: a\npolicy: dp3\nname: b\n", Path("x.yaml"))


def test_positions_point_at_keys_and_items() -> None:
    loc = parse_yaml("a:\n  b:\n    - 1\n    - 2\n", Path("x"))
    assert loc.positions[("a", "b")] == (2, 3)
    assert loc.positions[("a", "b", 1)] == (4, 7)
    assert loc.position(("a", "b", 1, "zzz")) == (4, 7)
    assert format_loc(("a", "b", 1, "c")) == "a.b[1].c"
