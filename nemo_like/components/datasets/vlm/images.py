"""One image of a data row -> an RGB PIL image, treating the data file as untrusted.

Why so strict: a data file can name any path and hold any bytes. A relative path is
read from the data file's folder (or ``image_root``) and a path that resolves outside
that root (``..``, an absolute path, a symlink) is refused unless the dataset was built
with ``allow_outside_root=True``. Nothing is fetched from the network. Only common
raster formats are decoded (not e.g. EPS, which PIL hands to Ghostscript), and the pixel
count is checked from the header before decoding (decompression bombs).
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import re
import warnings
from dataclasses import dataclass
from typing import Any

from PIL import Image

from nemo_like.components.datasets.json_rows import DatasetError

MAX_IMAGE_PIXELS = 40_000_000  # about 6300 x 6300; larger images are refused, not decoded
FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")
_BASE64 = re.compile(r"^[A-Za-z0-9+/=\s_-]+$")
_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"RIFF", b"BM")


@dataclass(frozen=True)
class ImagePolicy:
    """Where relative image paths are read from, and what is allowed."""

    root: str | None = None  # folder that relative paths resolve against (None: paths are refused)
    allow_outside_root: bool = False
    max_pixels: int = MAX_IMAGE_PIXELS


def source_kind(value: Any) -> str:
    """``pil``, ``bytes``, ``data_url``, ``url``, ``base64`` or ``path``: how ``value`` is read.

    A string is base64 when it is long, uses only base64 characters (so no ``.`` of a file
    suffix) and its first bytes are those of an image format; otherwise it is a path.
    """
    if isinstance(value, Image.Image):
        return "pil"
    if isinstance(value, (bytes, bytearray)):
        return "bytes"
    if isinstance(value, dict) and (value.get("bytes") is not None or value.get("path")):
        return "bytes" if value.get("bytes") is not None else "path"  # the datasets Image feature's form
    if not isinstance(value, str) or not value.strip():
        return "invalid"
    text = value.strip()
    if text[:5].lower() == "data:":
        return "data_url"
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text) and not text.lower().startswith("file://"):
        return "url"
    if len(text) >= 64 and _BASE64.match(text[:4096]) and _decodes_to_image(text[:88]):
        return "base64"
    return "path"


def _decodes_to_image(head: str) -> bool:
    try:
        raw = base64.b64decode(head[: len(head) // 4 * 4], validate=False)
    except (binascii.Error, ValueError):
        return False
    return raw.startswith(_MAGIC)


def check_source(value: Any, where: str, policy: ImagePolicy) -> None:
    """Cheap checks at dataset construction: the form is known, a path exists inside the root, base64 looks right."""
    kind = source_kind(value)
    if kind == "invalid":
        raise DatasetError(f"{where}: expected an image path, base64 text or a data: URL, got {_describe(value)}")
    if kind == "url":
        raise DatasetError(f"{where}: image URLs are not fetched ({_short(value)}); download the image first "
                           "and reference the local file")
    if kind == "path":
        resolve_path(value["path"] if isinstance(value, dict) else value, where, policy)
    if kind == "data_url" and not _BASE64.match(_data_url_payload(value, where)[:4096]):
        raise DatasetError(f"{where}: the data URL's payload is not base64 text")


def load_image(value: Any, where: str, policy: ImagePolicy) -> Image.Image:
    """The RGB image ``value`` stands for; any problem is one ``DatasetError`` line starting with ``where``."""
    check_source(value, where, policy)
    kind = source_kind(value)
    if kind == "pil":
        return _checked_rgb(value, where, policy)
    if kind == "path":
        path = resolve_path(value["path"] if isinstance(value, dict) else value, where, policy)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            raise DatasetError(f"{where}: cannot read image {path} ({e.strerror or e})") from None
    elif kind == "bytes":
        data = bytes(value["bytes"] if isinstance(value, dict) else value)
    elif kind == "data_url":
        data = _b64decode(_data_url_payload(value, where), where)
    else:
        data = _b64decode(value, where)
    return _decode(data, where, policy)


def resolve_path(path: str, where: str, policy: ImagePolicy) -> str:
    """The real path of an image file, refused when it resolves outside the root (unless allowed)."""
    if path.lower().startswith("file://"):
        path = path[len("file://"):]
    if policy.root is None and not policy.allow_outside_root:
        raise DatasetError(f"{where}: image path {path!r} but the data has no folder to read images from; "
                           "set image_root")
    root = os.path.realpath(policy.root) if policy.root is not None else os.getcwd()
    real = os.path.realpath(os.path.join(root, path))
    inside = os.path.commonpath([real, root]) == root
    if not inside and not policy.allow_outside_root:
        raise DatasetError(f"{where}: image path {path!r} resolves outside the image root {root}; refused "
                           "(build the dataset with allow_outside_root=True to allow it)")
    if not os.path.isfile(real):
        raise DatasetError(f"{where}: image file not found: {path!r} (looked for {real})")
    return real


def _data_url_payload(url: str, where: str) -> str:
    header, sep, payload = url.strip().partition(",")
    if not sep or not header.lower().startswith("data:image/") or not header.lower().endswith(";base64"):
        raise DatasetError(f"{where}: a data URL must look like data:image/png;base64,<data>; got {_short(url)}")
    return payload


def _b64decode(text: str, where: str) -> bytes:
    compact = re.sub(r"\s+", "", text)
    try:
        if "-" in compact or "_" in compact:
            return base64.urlsafe_b64decode(compact)
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as e:
        raise DatasetError(f"{where}: the image is not valid base64 ({e})") from None


def _decode(data: bytes, where: str, policy: ImagePolicy) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
            _check_size(image, where, policy)
            image.load()
    except DatasetError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DatasetError(f"{where}: image refused as a decompression bomb ({e})") from None
    except Exception as e:  # PIL raises many kinds for bad bytes
        raise DatasetError(f"{where}: cannot decode the image ({type(e).__name__}: {_first_line(e)}); "
                           f"supported formats: {', '.join(FORMATS)}") from None
    return _checked_rgb(image, where, policy)


def _check_size(image: Image.Image, where: str, policy: ImagePolicy) -> None:
    width, height = image.size
    if width < 1 or height < 1:
        raise DatasetError(f"{where}: the image is empty ({width}x{height})")
    if width * height > policy.max_pixels:
        raise DatasetError(f"{where}: the image is {width}x{height} = {width * height} pixels, over the limit of "
                           f"{policy.max_pixels} (max_image_pixels); shrink it or raise the limit")


def _checked_rgb(image: Image.Image, where: str, policy: ImagePolicy) -> Image.Image:
    _check_size(image, where, policy)
    return image if image.mode == "RGB" else image.convert("RGB")


def _first_line(e: Exception) -> str:
    text = str(e)
    return text.splitlines()[0] if text else ""


def _short(value: Any) -> str:
    text = str(value)
    return repr(text if len(text) <= 60 else text[:57] + "...")


def _describe(value: Any) -> str:
    return "an empty string" if isinstance(value, str) else type(value).__name__
