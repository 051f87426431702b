"""Workflows from the SDK: `chain(a, b, c)` and `group([a, b]).then(callback)`.

    from jobq import Client, chain, group, job

    with Client() as jobs:
        run = jobs.submit_flow(group([job("resize", {"n": 1}), job("resize", {"n": 2})])
                               .then(job("merge")))
        merged = jobs.wait(run.last)        # merge's handler reads ctx.parent_results

A flow is a list of stages; every job of a stage depends on every job of the stage before
(`depends_on`), and all of them share one workflow id (GET /workflows/{id}).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Unpack

from jobq.models import Job, JobRequest, SubmitOptions, _Model

Item = JobRequest | Mapping[str, Any]


def job(
    task: str, payload: Mapping[str, Any] | None = None, **options: Unpack[SubmitOptions]
) -> JobRequest:
    """One job of a flow (the same fields as submit())."""
    return JobRequest.model_validate({"task": task, "payload": dict(payload or {}), **options})


def _request(item: Item) -> JobRequest:
    from jobq._core import job_request

    return job_request(item)


@dataclass(frozen=True)
class Flow:
    """Stages of jobs to submit in order; build with chain() and group()."""

    stages: tuple[tuple[JobRequest, ...], ...]

    def then(self, *steps: Item | Flow) -> Flow:
        """This flow, followed by `steps` (each its own stage, in order)."""
        return chain(self, *steps)

    def on_parent_failure(self, policy: Literal["cancel", "run"]) -> Flow:
        """Every waiting job of the flow follows `policy` when a parent fails (default
        cancel: the rest of the flow is cancelled)."""
        return Flow(
            tuple(
                tuple(r.model_copy(update={"on_parent_failure": policy}) for r in stage)
                for stage in self.stages
            )
        )


def chain(*steps: Item | Flow) -> Flow:
    """Each step runs after the one before has succeeded (a flow given as a step is spliced
    in whole: chain(a, group([b, c]), d))."""
    stages: list[tuple[JobRequest, ...]] = []
    for step in steps:
        if isinstance(step, Flow):
            stages.extend(step.stages)
        else:
            stages.append((_request(step),))
    return Flow(tuple(stages))


def group(items: Iterable[Item]) -> Flow:
    """Jobs that run in parallel; `.then(callback)` runs callback once all of them succeeded,
    with their results in ctx.parent_results (in this order)."""
    stage = tuple(_request(i) for i in items)
    if not stage:
        raise ValueError("group() needs at least one job")
    return Flow((stage,))


class FlowRun(_Model):
    """A submitted flow: its workflow id and its jobs, stage by stage (as submitted)."""

    workflow_id: uuid.UUID
    stages: list[list[Job]]

    @property
    def jobs(self) -> list[Job]:
        """Every job, in submission order."""
        return [j for stage in self.stages for j in stage]

    @property
    def last(self) -> Job:
        """The last job submitted (a chain's end, a group's callback)."""
        return self.stages[-1][-1]
