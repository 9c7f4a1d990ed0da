"""The README agrees with the code: its job-file schema validates as written, and every `runner VERB` it shows
is a verb the CLI has."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from runner.cli import build_parser
from runner.spec.load import parse_job_text

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_the_job_file_schema_validates() -> None:
    block = README[README.index("### The job file"):]
    block = block[block.index("```yaml") + len("```yaml"):]
    block = block[: block.index("```")]
    job = parse_job_text(block, REPO / "jobs" / "readme.yaml", {})
    fields = {"description", "slurm", "mounts", "secret_env", "allow_host_access"}
    assert fields <= {k for k in job.spec.model_fields_set}
    assert job.spec.image.pip_extra_index_url is None and "pip_extra_index_url" in block


def test_every_runner_verb_it_shows_exists() -> None:
    parser = build_parser()
    verbs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    shown = set(re.findall(r"^runner ([a-z]+)", README, re.M)) | set(re.findall(r"`runner ([a-z]+)", README))
    assert shown and shown <= set(verbs), shown - set(verbs)
