"""The `thumbnail` task. Workers import this module (JOBQ_TASK_MODULES=thumbnailer.tasks);
the jobq API never does: it validates submits against the JSON Schema of ThumbnailRequest,
which workers publish to the task catalogue when they start."""

from __future__ import annotations

import os
import urllib.error
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from jobq import Exponential, JobContext, PermanentError, RetryableError, task
from thumbnailer.images import NotAnImage, make_thumbnails, open_image, read_source

Size = Annotated[int, Field(ge=16, le=2048)]


class ThumbnailRequest(BaseModel):
    """What to thumbnail, at which sizes, in which format."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(pattern=r"^(https?|file)://", description="URL of the image")
    sizes: list[Size] = Field(default=[128], min_length=1, max_length=8)
    format: Literal["png", "jpeg", "webp"] = "png"


def output_dir() -> Path:
    """Where thumbnails go (a mounted volume or a bucket-synced directory in production)."""
    return Path(os.environ.get("THUMBNAILER_OUTPUT_DIR", "/tmp/thumbnails"))


@task(
    "thumbnail",
    payload_model=ThumbnailRequest,
    timeout_seconds=120,
    max_attempts=5,
    backoff=Exponential(base_seconds=2, cap_seconds=60),
)
def thumbnail(req: ThumbnailRequest, ctx: JobContext) -> dict[str, Any]:
    """Fetch an image and store a thumbnail of it for each requested size."""
    try:
        data = read_source(req.source)
    except urllib.error.HTTPError as exc:
        if 400 <= exc.code < 500:
            raise PermanentError(f"{req.source}: HTTP {exc.code}") from None
        raise RetryableError(f"{req.source}: HTTP {exc.code}") from None
    except (urllib.error.URLError, TimeoutError) as exc:
        raise RetryableError(f"{req.source}: {exc}") from None
    except NotAnImage as exc:
        raise PermanentError(str(exc)) from None
    try:
        image = open_image(data)
    except NotAnImage as exc:
        raise PermanentError(str(exc)) from None
    made = make_thumbnails(image, req.sizes, req.format, output_dir() / str(ctx.job_id))
    return {
        "source": {"width": image.width, "height": image.height, "format": image.format},
        "thumbnails": [asdict(t) for t in made],
    }
