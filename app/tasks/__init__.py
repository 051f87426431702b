"""Task registry: named Python functions that jobs run."""

from app.tasks.registry import REGISTRY, JobContext, TaskSpec, task

__all__ = ["REGISTRY", "JobContext", "TaskSpec", "task"]
