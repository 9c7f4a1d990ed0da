"""Reading and writing checkpoint files without running code from them.

A torch.save file is a pickle, and a pickle can run any code when it is loaded. Every checkpoint this project
reads goes through `load`: torch's weights-only unpickler (tensors, containers, numbers, strings), widened only
by the explicit allow-list a caller passes for a foreign format it must read (upstream DP3's OmegaConf). A file
that is not a torch.save file is refused by name before anything reads it. `write` is the matching atomic
writer: temp file, fsync, the sha256 of the bytes written, rename.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

#: torch.save's formats: a zip archive (torch >= 1.6) or the legacy pickle stream (protocol 2 opcode first).
_MAGIC = (b"PK\x03\x04", b"\x80\x02")
_CHUNK = 1 << 20


class CheckpointError(ValueError):
    """A file that cannot be used as a checkpoint: not one, refused (it would run code), unreadable, or altered."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path}: {reason}")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def check_file(path: Path) -> None:
    """Refuse what is not a regular torch.save file (a FIFO, a device, /etc/passwd) without reading past 4 bytes."""
    try:
        if not path.is_file():
            raise CheckpointError(path, "not a checkpoint: no such regular file")
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise CheckpointError(path, f"cannot read it ({e.strerror})") from e
    if not head.startswith(_MAGIC):
        raise CheckpointError(path, "not a checkpoint: not a file written by torch.save")


def load(path: Path, map_location: str | torch.device = "cpu", *, allow: Sequence[Any] = (),
         expect_sha256: str | None = None) -> Any:
    """Load a torch.save file with the weights-only unpickler (plus `allow`); never runs code from the file.

    Raises CheckpointError naming the file: not a checkpoint, a checksum that differs from `expect_sha256`, a
    pickle naming a class outside the allow-list (refused before anything runs), or a truncated file.
    """
    check_file(path)
    if expect_sha256 is not None and (got := sha256(path)) != expect_sha256:
        raise CheckpointError(path, f"checksum mismatch (sha256 {got[:12]}..., the manifest recorded "
                                    f"{expect_sha256[:12]}...): the file changed after it was written")
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()
        detail = next((ln for ln in first if "GLOBAL" in ln or "Unsupported" in ln), first[0] if first else "")
        raise CheckpointError(path, f"refused: it holds objects other than tensors and plain values, and loading "
                                    f"them could run code ({detail.strip()})") from e
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(path, f"unreadable checkpoint, truncated or corrupt ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0] if str(e) else ''})") from e


#: Globals a foreign torch.save file may name that are real and safe: tensor rebuilding and plain containers.
_REAL: frozenset[tuple[str, str]] = frozenset({
    ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"), ("torch", "Size"), ("torch", "device"),
    ("collections", "OrderedDict"), ("collections", "defaultdict"), ("_codecs", "encode"),
    *((b, n) for b in ("builtins", "__builtin__") for n in ("dict", "list", "tuple", "set", "frozenset", "int", "long",
                                                             "float", "bool", "str", "bytes", "bytearray", "object")),
    *(("torch", n) for n in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "int16", "int8", "uint8",
                             "bool")),
})


class StandIn:
    """What an allowed foreign class becomes: it keeps the arguments and state it was given and runs nothing."""

    what = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs
        self.state: Any = None
        self.items: dict[Any, Any] = {}

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.items[len(self.items)] = value

    def extend(self, values: Any) -> None:
        for v in values:
            self.append(v)

    def __repr__(self) -> str:
        return f"<{self.what}>"


class _RestrictedUnpickler(pickle.Unpickler):
    stand_ins: tuple[str, ...] = ()
    source = "<checkpoint>"

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _REAL:
            return super().find_class(module, name)
        if module.startswith(self.stand_ins) or f"{module}." in self.stand_ins:
            return type(name, (StandIn,), {"what": f"{module}.{name}"})
        msg = f"it names {module}.{name}, and loading that could run code"
        raise pickle.UnpicklingError(msg)


def load_foreign(path: Path, map_location: str | torch.device = "cpu", *, stand_ins: tuple[str, ...]) -> Any:
    """Load another program's torch.save file (upstream DP3's dill/OmegaConf payload). Tensors are real; classes
    from the `stand_ins` module prefixes become inert StandIn objects; anything else is refused before it runs."""
    check_file(path)
    unpickler = type("Unpickler", (_RestrictedUnpickler,), {"stand_ins": stand_ins, "source": str(path)})
    module = type("RestrictedPickle", (), {"Unpickler": unpickler, "load": pickle.load, "__name__": "pickle"})
    try:
        return torch.load(path, map_location=map_location, weights_only=False, pickle_module=module)
    except pickle.UnpicklingError as e:
        raise CheckpointError(path, f"refused: {e}") from e
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, TypeError) as e:
        raise CheckpointError(path, f"unreadable checkpoint ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                              ) from e


def plain(obj: Any) -> Any:
    """Stand-ins of OmegaConf containers and nodes as plain dicts, lists and values (others as a description)."""
    if isinstance(obj, StandIn):
        state: dict[str, Any] = obj.state if isinstance(obj.state, dict) else {}
        if "_content" in state:
            return plain(state["_content"])
        if "_val" in state:
            return plain(state["_val"])
        return {"__class__": obj.what, "state": plain(obj.state), "args": plain(list(obj.args))}
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return obj


#: What a training framework's own checkpoint files (accelerate's RNG states, DeepSpeed's model and optimizer
#: states) may name: tensors and their storages, plain containers, numpy arrays and torch/numpy scalar types.
FRAMEWORK_GLOBALS: frozenset[tuple[str, str]] = _REAL | frozenset({
    ("torch._utils", "_rebuild_tensor"), ("torch.serialization", "_get_layout"), ("torch", "strided"),
    *((m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    # DeepSpeed's ZeRO optimizer state: plain data classes and an enum (their construction runs no other code).
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"), ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"), ("deepspeed.utils.tensor_fragment", "fragment_address"),
})
_FRAMEWORK_PREFIXES = ("numpy.dtypes.",)  # numpy 2's dtype classes (UInt32DType, ...)
_STRING_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING",
                         "STRING"})
_PUT_OPS = frozenset({"BINPUT", "LONG_BINPUT", "PUT"})  # memo writes at an explicit index (MEMOIZE: the next one)
_GET_OPS = frozenset({"BINGET", "LONG_BINGET", "GET"})


def pickle_globals(data: bytes) -> list[tuple[str, str]]:
    """Every global a pickle stream names, read without executing it. A STACK_GLOBAL whose strings cannot be
    followed statically is reported as ('?', '?'), which no allow-list admits."""
    import pickletools

    found: list[tuple[str, str]] = []
    recent: list[Any] = []
    memo: dict[int, Any] = {}
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("GLOBAL", "INST"):
            module, _, name = str(arg).partition(" ")
            found.append((module, name))
            recent.append(None)
        elif op.name == "STACK_GLOBAL":
            pair = recent[-2:] if len(recent) >= 2 else [None, None]
            found.append((str(pair[0]), str(pair[1])) if all(isinstance(x, str) for x in pair) else ("?", "?"))
            recent.append(None)
        elif op.name in _STRING_OPS:
            recent.append(arg)
        elif op.name in _PUT_OPS:
            memo[int(str(arg))] = recent[-1] if recent else None
        elif op.name == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
        elif op.name in _GET_OPS:
            recent.append(memo.get(int(str(arg))))
        elif op.name in ("REDUCE", "BUILD", "NEWOBJ", "NEWOBJ_EX", "OBJ"):
            recent.append(None)
    return found


_GETATTR = frozenset({("__builtin__", "getattr"), ("builtins", "getattr")})
#: The classes a framework pickles members of by name, getattr(<class>, "<member>") (Python's enum pickling).
ENUM_CLASSES: frozenset[tuple[str, str]] = frozenset({("deepspeed.runtime.zero.config", "ZeroStageEnum")})


def getattr_only_names_members(data: bytes, classes: frozenset[tuple[str, str]] = ENUM_CLASSES) -> bool:
    """Whether every use of `getattr` in a pickle is `getattr(<one of classes>, "<public name>")`: how Python pickles
    an enum member by name (DeepSpeed's ZeroStageEnum in its optimizer state). Each time the stream pushes getattr
    (by GLOBAL or from its memo), the next operations must push one of `classes`, a string naming a public
    attribute, build the pair and call: anything else (getattr on another object, a private or dunder name) is
    refused, since getattr could otherwise reach any callable."""
    import pickletools

    pushed: list[tuple[str, Any]] = []  # (operation, what it pushed) for every operation but memo writes
    memo: dict[int, Any] = {}
    for op, arg, _ in pickletools.genops(data):
        if op.name in _PUT_OPS:
            memo[int(str(arg))] = pushed[-1][1] if pushed else None
        elif op.name == "MEMOIZE":
            memo[len(memo)] = pushed[-1][1] if pushed else None
        elif op.name in ("GLOBAL", "INST"):
            pushed.append((op.name, tuple(str(arg).split(" ", 1))))
        elif op.name in _STRING_OPS:
            pushed.append((op.name, str(arg)))
        elif op.name in _GET_OPS:
            pushed.append((op.name, memo.get(int(str(arg)))))
        else:
            pushed.append((op.name, None))
    for i, (_, value) in enumerate(pushed):
        if value not in _GETATTR:
            continue
        window = pushed[i + 1:i + 5]
        if len(window) < 4:
            return False
        (_, cls), (_, name), (pair, _), (call, _) = window
        if not (cls in classes and isinstance(name, str) and name.isidentifier() and not name.startswith("_")
                and pair == "TUPLE2" and call == "REDUCE"):
            return False
    return True


def check_pickles(path: Path, allowed: frozenset[tuple[str, str]] = FRAMEWORK_GLOBALS) -> None:
    """Refuse a torch.save file (zip) whose pickles name anything outside `allowed`, before any loader sees it:
    DeepSpeed and accelerate load their own files with the full unpickler."""
    import zipfile

    check_file(path)
    try:
        with zipfile.ZipFile(path) as z:
            pickles = [n for n in z.namelist() if n.endswith(".pkl")]
            for name in pickles:
                data = z.read(name)
                safe_getattr = None
                for module, attr in pickle_globals(data):
                    if (module, attr) in _GETATTR:
                        if safe_getattr is None:
                            safe_getattr = getattr_only_names_members(data)
                        if safe_getattr:
                            continue
                    storage = module == "torch" and attr.endswith("Storage")  # torch maps these to storage types
                    if (module, attr) not in allowed and not storage and not module.startswith(_FRAMEWORK_PREFIXES):
                        raise CheckpointError(path, f"refused: it names {module}.{attr}, which a checkpoint of this "
                                                    "runner never holds and loading it could run code")
    except CheckpointError:
        raise
    except zipfile.BadZipFile as e:
        raise CheckpointError(path, "not a checkpoint this runner reads: not a zip torch.save file") from e
    except (ValueError, EOFError) as e:  # pickletools on a damaged stream
        raise CheckpointError(path, f"unreadable checkpoint, truncated or corrupt ({e})") from e


def folder_digest(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """{relative path: {size, sha256}} of every file under `folder` (but `skip`): a checkpoint folder's manifest."""
    return {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": sha256(p)}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in skip}


def verify_folder(folder: Path, recorded: dict[str, dict[str, Any]]) -> str | None:
    """Why `folder` does not match its recorded manifest (a file missing, resized, altered or added), or None."""
    for rel, info in recorded.items():
        p = folder / rel
        if not p.is_file():
            return f"{rel} is missing"
        if p.stat().st_size != info.get("size"):
            return f"{rel} is {p.stat().st_size} bytes, {info.get('size')} were written"
        if sha256(p) != info.get("sha256"):
            return f"{rel}: checksum mismatch, the file changed after it was written"
    extra = [str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.suffix in (".pt", ".pkl", ".bin")
             and str(p.relative_to(folder)) not in recorded]
    return f"{extra[0]} was added after the checkpoint was written" if extra else None


def write(payload: Any, path: Path) -> str:
    """torch.save to a temp name beside `path` (fsync'd), then rename; returns the file's sha256."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        digest = sha256(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return digest
