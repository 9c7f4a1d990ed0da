"""Policy images: render the Dockerfile and hash the build's inputs (pure), tag by that hash.

The build itself (effects, docker SDK) is runner/executors/docker_build.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from policies import PolicyInfo
from runner.spec.models import ImageSpec

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "templates"
IMAGES = REPO / "images"
TAG_PREFIX = "robo-runner"


@dataclass(frozen=True)
class BuildInputs:
    """Everything that goes into one image build; its hash is the tag."""

    image: str  # base | dp3 | rdt
    base: str
    pip: tuple[str, ...]
    apt: tuple[str, ...]
    build_args: tuple[tuple[str, str], ...]
    ca_bundle: Path | None
    wheelhouse: Path | None
    pip_index_url: str | None
    pip_extra_index_url: str | None


def build_inputs(spec: ImageSpec, policy: PolicyInfo, environ: Mapping[str, str]) -> BuildInputs:
    """The job's image section, with the CA bundle and wheelhouse defaulting to pip's own variables."""
    ca = spec.ca_bundle or _env_path(environ, "PIP_CERT") or _env_path(environ, "SSL_CERT_FILE")
    wheels = spec.wheelhouse or _env_path(environ, "PIP_FIND_LINKS")
    return BuildInputs(
        image=policy.image, base=spec.base, pip=tuple(spec.pip), apt=tuple(spec.apt),
        build_args=tuple(sorted(spec.build_args.items())), ca_bundle=ca,
        wheelhouse=wheels if wheels and wheels.is_dir() else None,
        pip_index_url=spec.pip_index_url or environ.get("PIP_INDEX_URL") or None,
        pip_extra_index_url=spec.pip_extra_index_url or environ.get("PIP_EXTRA_INDEX_URL") or None,
    )


def _env_path(environ: Mapping[str, str], name: str) -> Path | None:
    value = environ.get(name, "").split()[0] if environ.get(name, "").strip() else ""
    if not value or "://" in value:
        return None
    return Path(value)


def requirement_files(inputs: BuildInputs) -> list[str]:
    names = ["base.txt"] if inputs.image == "base" else ["base.txt", f"{inputs.image}.txt"]
    return [*names, "extra.txt"] if inputs.pip else names


def render_dockerfile(inputs: BuildInputs) -> str:
    """The Dockerfile text for these inputs (jinja2 with StrictUndefined: a missing variable is an error)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, autoescape=False)
    opts = []
    if inputs.ca_bundle:
        opts += ["--cert", "/tmp/ca-bundle.crt"]
    if inputs.wheelhouse:
        opts += ["--find-links", "/tmp/wheelhouse"]
    if inputs.pip_index_url:
        opts += ["--index-url", inputs.pip_index_url]
    if inputs.pip_extra_index_url:
        opts += ["--extra-index-url", inputs.pip_extra_index_url]
    template = env.get_template(f"Dockerfile.{inputs.image}.j2")
    return template.render(image=inputs.image, base=inputs.base, apt=list(inputs.apt),
                           build_args=[k for k, _ in inputs.build_args], ca_bundle=bool(inputs.ca_bundle),
                           wheelhouse=bool(inputs.wheelhouse), pip_options=opts,
                           requirements=requirement_files(inputs))


def context_files(inputs: BuildInputs) -> dict[str, Path]:
    """Build-context path -> host file, for every file the build copies in (generated files excluded)."""
    files: dict[str, Path] = {"requirements/base.txt": IMAGES / "base" / "requirements.txt"}
    if inputs.image != "base":
        files[f"requirements/{inputs.image}.txt"] = IMAGES / inputs.image / "requirements.txt"
    if inputs.ca_bundle:
        files["ca-bundle.crt"] = inputs.ca_bundle
    if inputs.wheelhouse:
        for f in sorted(inputs.wheelhouse.iterdir()):
            if f.is_file() and f.name.endswith((".whl", ".tar.gz", ".zip")):
                files[f"wheelhouse/{f.name}"] = f
    return files


def generated_files(inputs: BuildInputs, dockerfile: str) -> dict[str, str]:
    """Files written into the context from the inputs themselves."""
    out = {"Dockerfile": dockerfile}
    if inputs.pip:
        out["requirements/extra.txt"] = "\n".join(inputs.pip) + "\n"
    return out


def template_files(image: str) -> list[Path]:
    """The Dockerfile templates an image renders from (its own, and the base it extends)."""
    return sorted({TEMPLATES / "Dockerfile.base.j2", TEMPLATES / f"Dockerfile.{image}.j2"})


def context_hash(inputs: BuildInputs, files: Mapping[str, Path]) -> str:
    """sha256 over the templates, the build inputs and every context file (wheels by name, size and mtime).

    The rendered Dockerfile is a pure function of the first two, so hashing them gives the same identity
    without importing jinja2: a no-op `runner build` and `runner plan` stay fast.
    """
    h = hashlib.sha256()
    for t in template_files(inputs.image):
        h.update(f"tpl:{t.name}\0".encode() + t.read_bytes() + b"\0")
    h.update(repr(dataclasses.replace(inputs, ca_bundle=None, wheelhouse=None)).encode() + b"\0")
    for name, path in sorted(files.items()):
        st = path.stat()
        if name.startswith("wheelhouse/"):
            # Wheels are large and immutable by name; hashing 200 MB on every `runner build` would
            # make a no-op build slow.
            h.update(f"whl:{name}:{st.st_size}:{st.st_mtime_ns}\0".encode())
        else:
            h.update(f"file:{name}\0".encode() + path.read_bytes() + b"\0")
    return h.hexdigest()


def image_tag(image: str, digest: str) -> str:
    return f"{TAG_PREFIX}/{image}:{digest[:16]}"


@dataclass(frozen=True)
class ImagePlan:
    inputs: BuildInputs
    files: Mapping[str, Path]
    tag: str

    @property
    def dockerfile(self) -> str:
        return render_dockerfile(self.inputs)


def plan_image(spec: ImageSpec, policy: PolicyInfo, environ: Mapping[str, str]) -> ImagePlan:
    """Inputs, context files and tag for a job's image (reads only small local files)."""
    inputs = build_inputs(spec, policy, environ)
    files = context_files(inputs)
    return ImagePlan(inputs, files, image_tag(inputs.image, context_hash(inputs, files)))
