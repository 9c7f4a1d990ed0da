import shutil
import sys
import sysconfig
import types
from pathlib import Path

import pytest

from policies import cuda_graph


def test_compile_unavailable_names_the_missing_compiler_or_headers(monkeypatch: pytest.MonkeyPatch,
                                                                    tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "triton", types.ModuleType("triton"))
    monkeypatch.setattr(shutil, "which", lambda _name: None)
    assert cuda_graph.compile_unavailable() == "no C compiler (install gcc)"
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(sysconfig, "get_paths", lambda: {"include": str(tmp_path)})
    assert cuda_graph.compile_unavailable() == "no Python headers (install python3-dev)"
    (tmp_path / "Python.h").write_text("")
    assert cuda_graph.compile_unavailable() is None


def test_compile_unavailable_without_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "triton", None)  # import triton raises ImportError
    assert cuda_graph.compile_unavailable() == "triton is not installed"


def test_compile_failed_keeps_the_first_line_short() -> None:
    exc = RuntimeError("InductorError: " + "x" * 500 + "\nTraceback (most recent call last): ...")
    msg = cuda_graph.compile_failed(exc, "training without it")
    assert msg.startswith("torch.compile failed (RuntimeError: InductorError: xxx")
    assert msg.endswith("); training without it") and "Traceback" not in msg and len(msg) < 260
    assert cuda_graph.compile_failed(ValueError(), "running without it") == \
        "torch.compile failed (ValueError: ); running without it"
