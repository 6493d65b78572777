"""Every way an image reaches the app is checked before it costs memory; errors read cleanly.

An image can arrive as a file uploaded to ``/gradio_api/upload`` (limited by Gradio's
``max_file_size`` while it streams in) and then named by ``{"path": ...}`` in an API call, as a
``data:`` URL inside the call's JSON, or as an http(s) URL that Gradio would download. Gradio
decodes a ``data:`` URL and downloads a URL *before* the event's function runs, so the checks
sit in front of it:

* ``RequestGuard``, an ASGI middleware (installed by ``launch``'s ``app_kwargs``): refuses a
  request body larger than one base64-encoded image may be (HTTP 413, before reading it),
  then walks the JSON for file payloads whose path Gradio would act on before the event runs
  (``refuse_bad_paths``): a URL (Gradio would download it), a folder (e.g. Gradio's own temp
  folder, which would break its shutdown cleanup) or a file outside the upload folder. Such a
  payload is replaced by a refusal marker, so the user gets the message as the event's
  ordinary error.
* ``guarded_image_input``: a ``gr.Image`` whose preprocessing reports that marker, refuses a
  ``data:`` URL by its length and then its header before decoding it (``data_url_bytes``;
  Gradio itself would decode and re-save it first), checks a file's bytes and header
  (``open_upload``) and hands the event a validated ``Upload``.
* ``clean_message`` / ``user_errors``: error texts without quotes, server paths or object reprs.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio
import gradio as gr

from ..checkpoint import CheckpointError
from ..data.image import MAX_FILE_BYTES, MAX_PIXELS, InputImageError, data_url_bytes, open_upload

__all__ = ["REFUSED", "RequestGuard", "clean_message", "guarded_image_input", "max_body_bytes",
           "path_problem", "refuse_bad_paths", "user_errors"]

JSON_SLACK = 64 * 1024  # bytes of JSON around one base64 image
REFUSED = "elastic_lab_refused"  # key of the guard's refusal in a file payload's "meta"


def max_body_bytes(max_file_bytes: int) -> int:
    """The largest API request body: one image as base64 (4 characters per 3 bytes) + JSON."""
    return (max_file_bytes + 2) // 3 * 4 + JSON_SLACK


def clean_message(text: str, replacements: Mapping[str, str] | None = None) -> str:
    """``text`` fit for a user: known paths replaced, other absolute paths cut to their last
    part, object reprs and quote characters removed."""
    for src, dst in sorted((replacements or {}).items(), key=lambda kv: -len(kv[0])):
        text = text.replace(src, dst)
    text = re.sub(r"<[^<>]*\bat 0x[0-9a-fA-F]+>", "the data", text)
    text = re.sub(r"(?<![\w.:/])/(?:[^\s/:,;()]+/)+([^\s/:,;()]+)", r"\1", text)
    return re.sub(r"[\"'`]", "", text).strip()


def _is_url(text: str) -> bool:
    return bool(re.match(r"(?i)^[a-z][a-z0-9+.-]*://", text))


def path_problem(path: Any, upload_dir: str | Path, name: str = "image") -> str | None:
    """Why a file payload's "path" must not reach Gradio, or None when it may.

    Gradio downloads a URL and moves (or registers for deletion) a local path before the
    event runs: a URL is refused (this app fetches nothing), and a local path must be a
    regular file inside the upload folder (not the folder itself, nor a file elsewhere).
    The image checks proper (bytes, pixels) follow in ``guarded_image_input``.
    """
    if path is None:
        return None
    if not isinstance(path, str):
        return f"{name}: the file path is not text"
    if _is_url(path):
        return (f"{name}: this app does not fetch images from URLs; download the picture and "
                "upload the file")
    root, resolved = Path(upload_dir).resolve(), Path(path).resolve()
    if resolved == root or not resolved.is_relative_to(root):
        return f"{name}: not a file uploaded to this app (upload it first)"
    if not resolved.is_file():
        return f"{name}: not a file (upload an image file)"
    return None


def refuse_bad_paths(data: Any, upload_dir: str | Path) -> int:
    """Replace every file payload of a request's JSON whose path is refused by a marker.

    The marker ({"path": None, "url": None, "meta": {..., REFUSED: message}}) passes
    Gradio untouched and makes ``guarded_image_input`` raise the message as the event's
    error, so the user sees it where any other error appears. Returns how many were replaced.
    """
    replaced = 0
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            if "path" not in item:
                stack.extend(item.values())
                continue
            name = Path(str(item.get("orig_name") or "")).name or "image"
            problem = path_problem(item["path"], upload_dir, name)
            if problem is not None:
                item.clear()
                item.update({"path": None, "url": None, "orig_name": name,
                             "meta": {"_type": "gradio.FileData", REFUSED: problem}})
                replaced += 1
    return replaced


class RequestGuard:
    """ASGI middleware that checks API request bodies before Gradio reads them.

    POST bodies other than multipart uploads are limited to ``max_body`` bytes (HTTP 413,
    before they are read); JSON bodies get ``refuse_bad_paths``. Everything else passes.
    """

    def __init__(self, app: Callable, upload_dir: str | Path, max_bytes: int = MAX_FILE_BYTES):
        self.app = app
        self.upload_dir = Path(upload_dir)
        self.max_bytes = max_bytes
        self.max_body = max_body_bytes(max_bytes)

    async def _refuse(self, send: Callable, status: int, message: str) -> None:
        body = json.dumps({"error": clean_message(message)}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if (scope["type"] != "http" or scope.get("method") != "POST"
                or scope.get("path", "").rstrip("/").endswith("/upload")):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        too_big = (f"the request is larger than this app accepts ({self.max_body // 1024} kB: "
                   f"one image of at most {self.max_bytes / 1024 / 1024:.0f} MB, base64-encoded)")
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            declared = 0
        if declared > self.max_body:
            await self._refuse(send, 413, too_big)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_body:
                await self._refuse(send, 413, too_big)
                return
        body = b"".join(chunks)
        if b"json" in headers.get(b"content-type", b"") and body:
            body = await anyio.to_thread.run_sync(self._rewrite, body)
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"]
                                          if k != b"content-length"]
                     + [(b"content-length", str(len(body)).encode())]}
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _rewrite(self, body: bytes) -> bytes:
        try:
            data = json.loads(body)
        except ValueError:
            return body  # not ours to judge: Gradio answers malformed JSON itself
        return json.dumps(data).encode() if refuse_bad_paths(data, self.upload_dir) else body


def guarded_image_input(max_bytes: int = MAX_FILE_BYTES, max_pixels: int = MAX_PIXELS,
                        **kwargs) -> gr.Image:
    """``gr.Image(type="filepath")`` whose preprocessing returns a validated ``Upload``.

    A file is checked and decoded by ``open_upload``; a ``data:`` URL is refused by length and
    header before it is decoded (``data_url_bytes``), never saved by Gradio. Errors become a
    ``gr.Error`` with the clean message. (An instance override rather than a subclass: Gradio
    writes a ``.pyi`` stub next to the module of every Component subclass.)
    """
    component = gr.Image(type="filepath", **kwargs)

    def preprocess(payload):  # Gradio's ImageData | None -> Upload | None
        if payload is None:
            return None
        name = Path(payload.orig_name or "").name or None
        try:
            refused = (payload.meta or {}).get(REFUSED)
            if refused:
                raise InputImageError(str(refused))
            if payload.url and payload.url.startswith("data:"):
                name = name or "pasted image"
                data = data_url_bytes(payload.url, name, max_bytes, max_pixels)
                return open_upload(data, name, max_bytes, max_pixels)
            if payload.path is None:
                raise InputImageError("no image file was sent")
            return open_upload(payload.path, name, max_bytes, max_pixels)
        except InputImageError as exc:
            raise gr.Error(clean_message(str(exc)), print_exception=False) from exc

    component.preprocess = preprocess
    return component


def user_errors(fn: Callable, replacements: Callable[[], Mapping[str, str]] = dict) -> Callable:
    """``fn`` with its expected failures turned into clean ``gr.Error`` messages.

    ``replacements()`` gives {server path: shown name} (e.g. checkpoint paths -> names).
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (InputImageError, CheckpointError, ValueError, RuntimeError, OSError) as exc:
            raise gr.Error(clean_message(str(exc), replacements()),
                           print_exception=False) from exc
    return wrapper
