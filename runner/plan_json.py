"""Versioned JSON view of plans (`runner plan --json`); secrets appear by name only."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from runner.executors import render_command
from runner.plan import StepPlan

PLAN_SCHEMA = 1


def plan_to_dict(p: StepPlan) -> dict[str, Any]:
    docker = asdict(p.docker)
    docker["env"] = [{"name": e.name, "value": None if e.secret else e.value, "secret": e.secret}
                     for e in p.docker.env]
    return {"job": p.job, "step": p.step, "run_id": p.run_id, "executor": p.executor,
            "argv": render_command(p)[1],
            "docker": docker, "local": _local(p),
            "why": [{"option": o, "reason": r} for o, r in p.why], "warnings": list(p.warnings),
            "options": {name: {"value": value, "set_by_job": mine} for name, value, mine in p.options},
            "launches": dict(p.preview) if p.preview else None, "log_file": str(p.log_file)}


def _local(p: StepPlan) -> dict[str, Any]:
    return {"argv": list(p.local.argv), "cwd": p.local.cwd,
            "env": [{"name": k, "value": None if k in p.local.secrets else v, "secret": k in p.local.secrets}
                    for k, v in p.local.env]}


def plan_to_json(plans: list[StepPlan], image: str) -> str:
    return json.dumps({"schema_version": PLAN_SCHEMA, "image": image, "steps": [plan_to_dict(p) for p in plans]},
                      indent=2)
