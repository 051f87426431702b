"""Image work without jobq: fetch bytes, make thumbnails (Pillow), store them."""

from __future__ import annotations

import io
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# Bigger downloads are refused: a thumbnailer must not be made to hold a huge file in memory.
MAX_SOURCE_BYTES = 20 * 1024 * 1024
SAVE_AS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


class NotAnImage(ValueError):
    """The source is not an image Pillow can read (retrying will not help)."""


@dataclass(frozen=True)
class Thumbnail:
    """One stored thumbnail."""

    path: str
    width: int
    height: int
    bytes: int


def read_source(url: str, timeout: float = 30.0) -> bytes:
    """The bytes at an http(s):// or file:// URL (at most MAX_SOURCE_BYTES)."""
    if urllib.parse.urlsplit(url).scheme not in {"http", "https", "file"}:
        raise NotAnImage(f"unsupported URL scheme: {url}")
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - checked above
        data: bytes = response.read(MAX_SOURCE_BYTES + 1)
    if len(data) > MAX_SOURCE_BYTES:
        raise NotAnImage(f"source is larger than {MAX_SOURCE_BYTES} bytes")
    return data


def open_image(data: bytes) -> Image.Image:
    """Decode the bytes (NotAnImage if Pillow cannot)."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise NotAnImage(f"not a readable image: {exc}") from None
    return image


def make_thumbnails(
    image: Image.Image, sizes: list[int], fmt: str, out_dir: Path
) -> list[Thumbnail]:
    """Store one thumbnail per size (the longest side at most `size`) in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    made = []
    for size in sizes:
        thumb = image.copy()
        thumb.thumbnail((size, size))
        if fmt == "jpeg" and thumb.mode not in {"RGB", "L"}:
            thumb = thumb.convert("RGB")  # JPEG has no alpha channel
        path = out_dir / f"{size}.{fmt}"
        thumb.save(path, SAVE_AS[fmt])  # overwrites: a retried job writes the same files
        made.append(Thumbnail(str(path), thumb.width, thumb.height, path.stat().st_size))
    return made
