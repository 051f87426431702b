"""Flow control over HTTP: pause/resume and limits of tasks and queues (docs/flow-control.md)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from sqlalchemy.orm import Session

from app.api.routes.jobs import _ERRORS
from app.db import translate_db_errors
from app.jobs import controls
from app.jobs.controls import ControlList, ControlOut, ControlUpdate, Scope

router = APIRouter(tags=["flow control"])
T = TypeVar("T")


def _in_transaction(request: Request, work: Callable[[Session], T]) -> T:
    with translate_db_errors(), request.app.state.runtime.sessions.begin() as session:
        return work(session)


@router.get("/controls", response_model=ControlList, responses=_ERRORS)
def list_controls(request: Request) -> ControlList:
    """Every task and queue that is (or was) paused or limited, with what is in effect."""
    return ControlList(controls=_in_transaction(request, controls.list_all))


def _routes(scope: Scope, prefix: str) -> None:
    """GET/PATCH .../controls and POST .../pause, .../resume for one scope."""
    path = f"/{prefix}/{{name}}"

    def get_controls(name: str, request: Request) -> ControlOut:
        return _in_transaction(request, lambda s: controls.get(s, scope, name))

    def patch_controls(name: str, body: ControlUpdate, request: Request) -> ControlOut:
        return _in_transaction(request, lambda s: controls.update(s, scope, name, body))

    def pause(name: str, request: Request) -> ControlOut:
        return _in_transaction(request, lambda s: controls.set_paused(s, scope, name, True))

    def resume(name: str, request: Request) -> ControlOut:
        return _in_transaction(request, lambda s: controls.set_paused(s, scope, name, False))

    what = f"a {scope}"
    options: dict[str, Any] = {"response_model": ControlOut, "responses": _ERRORS}
    router.get(f"{path}/controls", summary=f"Pause and limits of {what}", **options)(get_controls)
    router.patch(f"{path}/controls", summary=f"Change the pause or limits of {what}", **options)(
        patch_controls
    )
    router.post(f"{path}/pause", summary=f"Pause {what}: its jobs wait", **options)(pause)
    router.post(f"{path}/resume", summary=f"Resume {what}", **options)(resume)


_routes("task", "tasks")
_routes("queue", "queues")
