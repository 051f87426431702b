"""The example's own tests: the handler called directly, no jobq service needed."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from PIL import Image
from pydantic import ValidationError
from thumbnailer.tasks import ThumbnailRequest, thumbnail

from jobq import JobContext, PermanentError


def _ctx() -> JobContext:
    return JobContext(job_id=uuid.uuid4(), task="thumbnail", attempt=1, max_attempts=5)


def _image(tmp_path: Path, size: tuple[int, int] = (640, 480)) -> str:
    path = tmp_path / "source.png"
    Image.new("RGBA", size, (200, 40, 40, 255)).save(path)
    return path.as_uri()


def test_makes_one_thumbnail_per_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("THUMBNAILER_OUTPUT_DIR", str(tmp_path / "out"))
    req = ThumbnailRequest(source=_image(tmp_path), sizes=[64, 320], format="jpeg")
    result = thumbnail(req, _ctx())
    assert result["source"] == {"width": 640, "height": 480, "format": "PNG"}
    dims = [(t["width"], t["height"]) for t in result["thumbnails"]]
    assert dims == [(64, 48), (320, 240)]
    for t in result["thumbnails"]:
        with Image.open(t["path"]) as made:
            assert made.format == "JPEG"


def test_a_file_that_is_not_an_image_fails_permanently(tmp_path: Path) -> None:
    bogus = tmp_path / "notes.txt"
    bogus.write_text("hello")
    with pytest.raises(PermanentError, match="not a readable image"):
        thumbnail(ThumbnailRequest(source=bogus.as_uri()), _ctx())


def test_the_payload_model_refuses_what_the_api_will_refuse() -> None:
    with pytest.raises(ValidationError):
        ThumbnailRequest(source="file:///x.png", sizes=[5000])
    with pytest.raises(ValidationError):
        ThumbnailRequest(source="ftp://example.com/x.png")
    schema = ThumbnailRequest.model_json_schema()
    assert schema["properties"]["sizes"]["items"]["maximum"] == 2048
