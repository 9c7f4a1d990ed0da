"""Load pickles that may only hold numpy arrays and plain values. Pickle is code execution: a demo file or a
robot-server reply that names any other class is refused before anything in it runs."""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

_ALLOWED: frozenset[tuple[str, str]] = frozenset({
    # numpy arrays, scalars and dtypes, in numpy 1.x and 2.x module spellings
    *((mod, name) for mod in ("numpy.core.multiarray", "numpy._core.multiarray") for name in ("_reconstruct", "scalar")),
    *((mod, "_frombuffer") for mod in ("numpy.core.numeric", "numpy._core.numeric")),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    *(("builtins", name) for name in ("dict", "list", "tuple", "set", "frozenset", "bytearray", "complex", "slice")),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # protocol 2 pickles carry array bytes as latin-1 text
})


class UnsafePickleError(ValueError):
    """A pickle asked for a class outside the allow-list."""

    def __init__(self, source: str, module: str, name: str) -> None:
        self.source, self.module, self.name = source, module, name
        super().__init__(f"{source}: refused to load {module}.{name}: pickles can run code, and only numpy arrays "
                         "and plain values (dict, list, numbers, strings) are allowed")


class _Restricted(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase | io.BufferedReader, source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise UnsafePickleError(self.source, module, name)


def loads(data: bytes, source: str = "<bytes>") -> Any:
    """Unpickle `data` with the allow-list; `source` names it in errors."""
    return _Restricted(io.BytesIO(data), source).load()


def load_file(path: Path) -> Any:
    """Unpickle a file with the allow-list."""
    with open(path, "rb") as f:
        return _Restricted(f, str(path)).load()
