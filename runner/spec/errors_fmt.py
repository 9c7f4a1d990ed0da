"""Turn pydantic validation errors into located, actionable SpecProblems (did-you-mean for unknown keys)."""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel
from pydantic_core import ErrorDetails

from runner.errors import SpecProblem
from runner.spec.yamlsrc import Loc, Located, format_loc

_EXPECTED = {
    "int_type": "an integer",
    "int_parsing": "an integer",
    "int_from_float": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "tuple_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
    "path_type": "a path",
}


def suggest(word: str, choices: typing.Iterable[str]) -> str:
    """' did you mean 'x'?' for the nearest choice, or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def problems_from_validation(
    errors: list[ErrorDetails], located: Located, model: type[BaseModel]
) -> list[SpecProblem]:
    """One SpecProblem per pydantic error, positioned by the YAML key path."""
    out: list[SpecProblem] = []
    for err in errors:
        loc: Loc = tuple(err["loc"])
        out.append(located.problem(loc, _message(err, loc, model)))
    return out


def _message(err: ErrorDetails, loc: Loc, model: type[BaseModel]) -> str:
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        fields = fields_at(model, loc[:-1])
        where = f" in {format_loc(loc[:-1])}" if loc[:-1] else ""
        known = f" (known: {', '.join(sorted(fields))})" if fields and not suggest(str(loc[-1]), fields) else ""
        return f"unknown key '{loc[-1]}'{where}{suggest(str(loc[-1]), fields)}{known}"
    if kind == "missing":
        return "is required but missing"
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {value!r} ({type(value).__name__})"
    if kind == "literal_error":
        allowed = err.get("ctx", {}).get("expected", "")
        hint = suggest(str(value), [a.strip(" '") for a in str(allowed).replace(" or ", ",").split(",")])
        return f"must be one of {allowed}, got {value!r}{hint}"
    if kind in ("value_error", "assertion_error"):
        return str(err.get("ctx", {}).get("error", err["msg"]))
    rule = err["msg"][0].lower() + err["msg"][1:]
    return f"{rule}, got {value!r}"


def fields_at(model: type[BaseModel], loc: Loc) -> set[str]:
    """Field names of the model found by following `loc` down from `model` (empty when not a model)."""
    current: Any = model
    for part in loc:
        current = _child_type(current, part)
        if current is None:
            return set()
    model_cls = _as_model(current)
    return set(model_cls.model_fields) if model_cls else set()


def _child_type(tp: Any, part: str | int) -> Any:
    for cand in _unwrap(tp):
        model_cls = _as_model(cand)
        if model_cls is not None and isinstance(part, str) and part in model_cls.model_fields:
            return model_cls.model_fields[part].annotation
        origin = typing.get_origin(cand)
        args = typing.get_args(cand)
        if origin is dict and args:
            return args[1]
        if origin in (list, tuple) and args and isinstance(part, int):
            return args[0]
    return None


def _unwrap(tp: Any) -> list[Any]:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin is typing.Union or origin is types.UnionType:
        return [u for a in typing.get_args(tp) for u in _unwrap(a)]
    return [tp]


def _as_model(tp: Any) -> type[BaseModel] | None:
    for cand in _unwrap(tp):
        if isinstance(cand, type) and issubclass(cand, BaseModel):
            return cand
    return None
