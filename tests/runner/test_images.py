from pathlib import Path

import pytest

from policies import BUILTIN as POLICIES
from runner.images import build_inputs, context_files, plan_image, render_dockerfile
from runner.spec.models import ImageSpec


def tag(spec: ImageSpec, policy: str = "dp3", env: dict[str, str] | None = None) -> str:
    return plan_image(spec, POLICIES[policy], env or {}).tag


def test_tag_is_a_stable_content_hash() -> None:
    assert tag(ImageSpec()) == tag(ImageSpec())
    assert tag(ImageSpec()).startswith("robo-runner/dp3:")
    assert tag(ImageSpec(), "rdt").startswith("robo-runner/rdt:")


@pytest.mark.parametrize("change", [
    {"pip": ["einops"]}, {"apt": ["libusb-1.0-0"]}, {"build_args": {"X": "1"}}, {"base": "debian:bookworm"},
    {"pip_index_url": "https://mirror/simple"},
])
def test_tag_changes_with_every_input(change: dict[str, object]) -> None:
    assert tag(ImageSpec(**change)) != tag(ImageSpec())  # type: ignore[arg-type]


def test_ca_bundle_and_wheelhouse_from_pip_env(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("CERT A")
    wh = tmp_path / "wheels"
    wh.mkdir()
    (wh / "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"x" * 10)
    (wh / "notes.txt").write_text("ignored")
    env = {"PIP_CERT": str(ca), "PIP_FIND_LINKS": str(wh)}
    inputs = build_inputs(ImageSpec(), POLICIES["dp3"], env)
    assert inputs.ca_bundle == ca and inputs.wheelhouse == wh
    files = context_files(inputs)
    assert set(files) == {"requirements/base.txt", "requirements/dp3.txt", "ca-bundle.crt",
                          "wheelhouse/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"}
    text = render_dockerfile(inputs)
    assert "--cert /tmp/ca-bundle.crt --find-links /tmp/wheelhouse" in text
    assert "FROM os AS packages" in text  # the wheelhouse stays in a throw-away stage
    first = tag(ImageSpec(), env=env)
    ca.write_text("CERT B")
    assert tag(ImageSpec(), env=env) != first
    # The job's own setting wins over the environment; a missing wheelhouse folder is left out.
    assert build_inputs(ImageSpec(wheelhouse=tmp_path / "nope"), POLICIES["dp3"], env).wheelhouse is None
    assert build_inputs(ImageSpec(), POLICIES["dp3"], {"SSL_CERT_FILE": str(ca)}).ca_bundle == ca


def test_no_ca_no_wheels_no_pip_options() -> None:
    text = render_dockerfile(build_inputs(ImageSpec(), POLICIES["command"], {}))
    assert "--cert" not in text and "--find-links" not in text and "COPY wheelhouse" not in text
    assert "-r /tmp/requirements/base.txt" in text and "dp3.txt" not in text


def test_dp3_requirements_pin_the_cpu_torch_and_zarr2() -> None:
    reqs = (Path(__file__).resolve().parents[2] / "images" / "dp3" / "requirements.txt").read_text()
    assert "torch==2.13.0" in reqs and "zarr>=2.16,<3" in reqs and "open3d" not in reqs.replace("# DP3", "")


def test_build_progress_is_one_line_a_dockerfile_step() -> None:
    from runner.executors.docker_build import build_progress

    line = build_progress("Step 3/12 : RUN pip install -r /tmp/requirements/base.txt\n", 65.4)
    assert line == "image build step 3/12 [###.................] 1m05s: RUN pip install -r /tmp/requirements/base.txt\n"
    assert build_progress("Collecting numpy\n", 1.0) is None  # the rest goes to the build log only
