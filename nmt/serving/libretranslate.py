"""LibreTranslate's API on `nmt serve`, so that its clients (libretranslatepy, browser
extensions, apps) work unchanged: POST /translate with `q`, `source`, `target` (form-encoded
or JSON) answers `{"translatedText": ...}`, and GET /languages lists the served pairs.

Our own POST /translate takes JSON with `text`; a request to /translate that is form-encoded,
or JSON with `q`, goes to /libretranslate/translate instead (`LibreTranslateRoutes`). Both
paths are also served under /libretranslate/ for clients that take a base URL.

    q             a string, or a list of strings          the text
    source        a language code, or "auto"              auto: the one source language served
    target        a language code                         picks the served model of the pair
    api_key       a key of --api-keys                     as the Authorization header would
    alternatives  0 to --max-beam-size - 1                more translations, as LibreTranslate
    format        "text"                                  "html" is refused (tags are not kept)
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from pydantic import ValidationError

from nmt.serving.schema import RequestError, TranslateRequest

PREFIX = "/libretranslate"

# Names for /languages; another code is named by itself.
NAMES = {
    "ar": "Arabic", "cs": "Czech", "da": "Danish", "de": "German", "el": "Greek",
    "en": "English", "es": "Spanish", "et": "Estonian", "fi": "Finnish", "fr": "French",
    "hu": "Hungarian", "it": "Italian", "ja": "Japanese", "ko": "Korean", "lt": "Lithuanian",
    "lv": "Latvian", "nl": "Dutch", "pl": "Polish", "pt": "Portuguese", "ro": "Romanian",
    "ru": "Russian", "sk": "Slovak", "sv": "Swedish", "tr": "Turkish", "uk": "Ukrainian",
    "zh": "Chinese",
}  # fmt: skip


class LibreTranslateRoutes:
    """ASGI middleware: a POST /translate in LibreTranslate's shape (form-encoded, or a JSON
    object with `q`) goes to /libretranslate/translate. Runs inside BodyLimit, which has read
    the body into scope["nmt.body"]."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/translate":
            if _is_libretranslate(content_type(scope), scope.get("nmt.body", b"")):
                scope = {**scope, "path": f"{PREFIX}/translate", "raw_path": None}
        await self.app(scope, receive, send)


def content_type(scope: dict) -> str:
    """An ASGI request's media type, lower-cased, without parameters ("" when none)."""
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-type":
            return value.split(b";")[0].strip().lower().decode("latin-1")
    return ""


def _is_libretranslate(content_type: str, body: bytes) -> bool:
    if content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
        return True
    if content_type != "application/json":
        return False
    try:
        tree = json.loads(body)
    except (ValueError, RecursionError):
        return False
    return isinstance(tree, dict) and "q" in tree and "text" not in tree


async def read_fields(raw: Request) -> dict[str, Any]:
    """The request's fields: a JSON object, or a form (url-encoded, or multipart where
    python-multipart is installed)."""
    content_type = raw.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await raw.body()
    if content_type == "application/x-www-form-urlencoded":
        try:
            pairs = parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
        except UnicodeDecodeError:
            raise RequestError(400, "the form is not UTF-8") from None
        return {k: v if k == "q" and len(v) > 1 else v[-1] for k, v in pairs.items()}
    if content_type == "multipart/form-data":
        try:
            form = await raw.form()
        except AssertionError:  # starlette: python-multipart is not installed
            raise RequestError(
                400, "send the form url-encoded (multipart needs python-multipart on the server)"
            ) from None
        return {k: form.getlist(k) if k == "q" and len(form.getlist(k)) > 1 else v
                for k, v in form.items()}  # fmt: skip
    try:
        tree = json.loads(body)
    except (ValueError, RecursionError):
        raise RequestError(400, "the body is not JSON") from None
    if not isinstance(tree, dict):
        raise RequestError(400, "the body must be a JSON object with q, source and target")
    return tree


def add_routes(app: FastAPI, service: Any) -> None:
    """LibreTranslate's /translate (at /libretranslate/translate) and /languages."""

    def languages() -> list[dict[str, Any]]:
        pairs: dict[str, list[str]] = {}
        for model in service.models.values():
            src, tgt = model.info["source_language"], model.info["target_language"]
            pairs.setdefault(src, [])
            if tgt not in pairs[src]:
                pairs[src].append(tgt)
        return [
            {"code": code, "name": NAMES.get(code, code), "targets": sorted(targets)}
            for code, targets in sorted(pairs.items())
        ]

    for path in ("/languages", f"{PREFIX}/languages"):
        app.add_api_route(path, languages, methods=["GET"], summary="LibreTranslate's languages")

    async def translate(raw: Request) -> dict[str, Any]:
        fields = await read_fields(raw)
        q, source, target = fields.get("q"), fields.get("source") or "auto", fields.get("target")
        if q is None:
            raise RequestError(400, "Invalid request: missing q parameter")
        if not target:
            raise RequestError(400, "Invalid request: missing target parameter")
        if not isinstance(source, str) or not isinstance(target, str):
            raise RequestError(400, "Invalid request: source and target must be language codes")
        if str(fields.get("format") or "text") != "text":
            raise RequestError(400, "only format 'text' is supported (HTML tags would be lost)")
        key = fields.get("api_key") or None
        service.authorize(raw, key if isinstance(key, str) else "")
        one = isinstance(q, str)
        lines = [q] if one else q
        if not isinstance(lines, list) or not all(isinstance(x, str) for x in lines):
            raise RequestError(400, "Invalid request: q must be a string or a list of strings")
        model = _model_for(service, source, target)
        alternatives = fields.get("alternatives") or 0
        if isinstance(alternatives, str) and alternatives.isdecimal():
            alternatives = int(alternatives)  # a form sends text
        if isinstance(alternatives, bool) or not isinstance(alternatives, int) or alternatives < 0:
            raise RequestError(400, "alternatives must be a whole number, 0 or more")
        beam = None
        if alternatives > 0 and model.translator.decode.method != "beam":
            beam = alternatives + 1
        try:
            request = TranslateRequest(
                text=[line.replace("\n", " ") for line in lines],
                model=model.name,
                nbest=alternatives + 1,
                beam_size=beam,
                scores=alternatives > 0,
            )
        except ValidationError as e:
            raise RequestError(400, f"Invalid request: {e.errors()[0]['msg']}") from None
        answer = await service.translate(request, raw.is_disconnected)
        texts = answer["translations"]
        response: dict[str, Any] = {"translatedText": texts[0] if one else texts}
        if alternatives > 0:
            others = [[h["translation"] for h in best[1:]] for best in answer["nbest"]]
            response["alternatives"] = others[0] if one else others
        if source == "auto":
            detected = {"confidence": 100.0, "language": model.info["source_language"]}
            response["detectedLanguage"] = detected if one else [detected] * len(texts)
        return response

    app.add_api_route(
        f"{PREFIX}/translate", translate, methods=["POST"], summary="LibreTranslate's translate"
    )


def _model_for(service: Any, source: str, target: str) -> Any:
    served = list(service.models.values())
    matches = [
        m
        for m in served
        if m.info["target_language"] == target
        and (source == "auto" or m.info["source_language"] == source)
    ]
    if source == "auto" and len({m.info["source_language"] for m in matches}) > 1:
        raise RequestError(400, "several source languages are served: give source, not auto")
    if not matches:
        pairs = ", ".join(
            f"{m.info['source_language']}->{m.info['target_language']}" for m in served
        )
        raise RequestError(400, f"{source}->{target} is not served (served: {pairs})")
    return matches[0]
