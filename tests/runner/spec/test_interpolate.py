from pathlib import Path

from runner.spec.interpolate import interpolate
from runner.spec.yamlsrc import parse_yaml

F = Path("j.yaml")


def run(text: str, env: dict[str, str] | None = None) -> tuple[object, list[str]]:
    data, problems = interpolate(parse_yaml(text, F), env or {})
    return data, [str(p) for p in problems]


def test_env_forms_and_defaults() -> None:
    data, problems = run("a: ${HOME}/x\nb: ${oc.env:USER}\nc: ${oc.env:NOPE,fallback}\nd: ${env:HOME}\n",
                         {"HOME": "/h", "USER": "me"})
    assert problems == []
    assert data == {"a": "/h/x", "b": "me", "c": "fallback", "d": "/h"}


def test_field_references_keep_type_and_chain() -> None:
    data, problems = run("task: t\nn: 3\nroot: /d/${task}\nsub: ${root}/raw\ncount: ${n}\nlabel: n=${n}\n"
                         "deep: ${res.gpus}\nres: {gpus: [0, 1]}\n")
    assert problems == []
    assert data["sub"] == "/d/t/raw"
    assert data["count"] == 3
    assert data["label"] == "n=3"
    assert data["deep"] == [0, 1]


def test_undefined_variable_names_line_key_and_fix() -> None:
    _, problems = run("name: x\nenv:\n  TOKEN_DIR: ${LAB_ROOT}/t\n")
    assert len(problems) == 1
    assert problems[0].startswith("j.yaml:3:3: env.TOKEN_DIR: environment variable LAB_ROOT is not set")
    assert "${oc.env:LAB_ROOT,<default>}" in problems[0]


def test_missing_field_and_cycle_and_bad_name() -> None:
    _, problems = run("a: ${b}\nb: ${a}\nc: ${data.nope}\ndata: {}\nd: ${oc.env:1BAD}\n")
    text = "\n".join(problems)
    assert "circular reference" in text
    assert "no field 'data.nope'" in text
    assert "not a valid environment variable name" in text
    assert len(problems) == 4  # a and b are both circular


def test_escape_and_every_problem_reported() -> None:
    data, problems = run("a: $${NOT_A_REF}\nb: ${X1}\nc: ${X2}\n")
    assert data["a"] == "${NOT_A_REF}"
    assert len(problems) == 2
