"""A policy from outside the runner, as a lab would write it in its own package: a job model and its steps, in
one module. tests/policies/test_plugins.py registers it; nothing in runner/ or policies/ names it."""

from __future__ import annotations

import json
import sys
from typing import Literal

from pydantic import Field

from policies import PolicyInfo
from policies.context import StepContext
from policies.entry import main
from runner.spec.models import JobCommon, StepsModel, StepSpec


class ToyTrain(StepSpec):
    epochs: int = Field(default=2, gt=0)


class ToySteps(StepsModel):
    train: ToyTrain | None = None


class ToyJob(JobCommon):
    policy: Literal["toy"]
    steps: ToySteps = Field(default_factory=ToySteps)


def step_train(ctx: StepContext) -> int:
    o = ctx.typed(ToyTrain)  # validated against ToyJob's model again in the step
    for epoch in range(o.epochs):
        print(f"toy: epoch {epoch + 1}/{o.epochs}", flush=True)
    (ctx.run_dir / "toy.json").write_text(json.dumps({"epochs": o.epochs}))
    return 0


STEPS = {"train": step_train}
POLICY = PolicyInfo(name="toy", model_path=f"{__name__}:ToyJob", image="base", steps=("train",), entry=__name__)

if __name__ == "__main__":
    sys.exit(main(POLICY, STEPS, sys.argv[1:]))
