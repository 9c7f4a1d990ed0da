"""Build a policy image through the Docker SDK, streaming its output to the terminal and a log file."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import docker.errors

from runner.errors import ImageError
from runner.images import ImagePlan, generated_files


@dataclass(frozen=True)
class ImageResult:
    tag: str
    id: str
    built: bool


def ensure_image(client: Any, plan: ImagePlan, log_path: Path, out: BinaryIO, *, rebuild: bool = False,
                 known_id: str | None = None) -> ImageResult:
    """The image for `plan`, built only when no image has its tag (the tag is the content hash).

    `known_id`: the id the caller already looked up for this tag, saving a round trip.
    """
    if known_id and not rebuild:
        return ImageResult(plan.tag, known_id, built=False)
    if not rebuild:
        try:
            return ImageResult(plan.tag, str(client.images.get(plan.tag).id), built=False)
        except docker.errors.ImageNotFound:
            pass
    _check_base(client, plan)
    with tempfile.TemporaryDirectory(prefix="rr-build-") as tmp:
        ctx = Path(tmp)
        _stage(ctx, plan)
        image_id = _build(client, ctx, plan, log_path, out)
    return ImageResult(plan.tag, image_id, built=True)


def _check_base(client: Any, plan: ImagePlan) -> None:
    base = plan.inputs.base
    try:
        client.images.get(base)
    except docker.errors.ImageNotFound:
        hint = ("build it with `make base-image` (debootstrap + docker import; no registry needed)"
                if base.startswith("robo-runner/") else f"pull it (`docker pull {base}`) or set image.base")
        raise ImageError(plan.tag, f"base image {base} is not in the engine: {hint}") from None


def _stage(ctx: Path, plan: ImagePlan) -> None:
    for name, text in generated_files(plan.inputs, plan.dockerfile).items():
        (ctx / name).parent.mkdir(parents=True, exist_ok=True)
        (ctx / name).write_text(text)
    for name, src in plan.files.items():
        dst = ctx / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)  # wheels can be hundreds of MB: link, copy only across file systems
        except OSError:
            shutil.copyfile(src, dst)


_STEP = re.compile(r"^Step (\d+)/(\d+) : (.*)$", re.M)


def build_progress(text: str, elapsed_s: float) -> str | None:
    """'image build step 3/12 [#####...] 1m05s: RUN pip install ...' for a Dockerfile step's first line, else None."""
    m = _STEP.search(text)
    if m is None:
        return None
    n, total, what = int(m.group(1)), int(m.group(2)), m.group(3).strip()
    filled = int(20 * (n - 1) / max(1, total))
    minutes, seconds = divmod(int(elapsed_s), 60)
    return (f"image build step {n}/{total} [{'#' * filled}{'.' * (20 - filled)}] {minutes}m{seconds:02d}s: "
            f"{what[:90]}{'...' if len(what) > 90 else ''}\n")


def _build(client: Any, ctx: Path, plan: ImagePlan, log_path: Path, out: BinaryIO) -> str:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    image_id: str | None = None
    tail: list[str] = []
    started = time.monotonic()
    out.write(f"building image {plan.tag}; its full output: {log_path}\n".encode())
    with open(log_path, "ab") as log:
        try:
            stream = client.api.build(path=str(ctx), tag=plan.tag, rm=True, forcerm=True, decode=True,
                                      buildargs=dict(plan.inputs.build_args),
                                      labels={"runner.image": plan.inputs.image})
            for item in stream:
                text = item.get("stream") or item.get("status") or ""
                if "error" in item:
                    text = f"ERROR: {item['error']}\n"
                if text:
                    log.write(text.encode())
                    log.flush()
                    tail = (tail + text.splitlines())[-20:]
                    line = build_progress(text, time.monotonic() - started)
                    if line:  # one line a Dockerfile step on the terminal; every line in the log
                        out.write(line.encode())
                        out.flush()
                if "aux" in item and "ID" in item["aux"]:
                    image_id = item["aux"]["ID"]
                if "error" in item:
                    msg = f"build failed (log: {log_path}):\n" + "\n".join(tail)
                    raise ImageError(plan.tag, msg)
        except docker.errors.APIError as e:
            raise ImageError(plan.tag, f"the engine refused the build: {e.explanation or e}") from e
    if image_id is None:
        image_id = str(client.images.get(plan.tag).id)
    # The throw-away package stage stays behind as a dangling image holding the wheelhouse: remove it.
    with contextlib.suppress(docker.errors.APIError):
        client.images.prune(filters={"dangling": True, "label": "runner.stage=packages"})
    return image_id
