# Copyright 2026 The olmo_hf authors. Licensed under the Apache License, Version 2.0.
"""Request validation for ``olmo-hf serve``: a bad request gets a 400 with a message, before it reaches the model.

Transformers' server hands request bodies to ``generate`` mostly unchecked: ``max_tokens=-1``, an empty
``messages`` list or ``temperature=-1`` end as an HTTP 500 and a traceback in the server log. The ASGI middleware
here reads the JSON body of ``POST /v1/chat/completions``, ``/v1/completions`` and ``/v1/responses``, checks the
fields below with :func:`request_error`, and answers ``400 {"error": {"message", "type", "param"}}`` (the OpenAI
error shape) for the first bad one; a good body is replayed untouched to Transformers' app.

Checked (when present): ``messages`` a non-empty list of objects with a string ``role``; ``prompt`` / ``input``
a non-empty string or list; ``max_tokens`` / ``max_completion_tokens`` / ``max_output_tokens`` an integer >= 1;
``temperature`` a number in [0, 2]; ``top_p`` in (0, 1]; ``frequency_penalty`` / ``presence_penalty`` in
[-2, 2]; ``n`` 1; ``seed`` an integer; ``stream`` true or false.
"""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["VALIDATED_PATHS", "RequestValidation", "request_error", "install", "uninstall"]

VALIDATED_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/responses")
_REQUIRED = {"/v1/chat/completions": "messages", "/v1/completions": "prompt", "/v1/responses": "input"}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


# field -> (check, what it must be)
_FIELDS = {
    "max_tokens": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "max_completion_tokens": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "max_output_tokens": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "temperature": (lambda v: _is_number(v) and 0 <= v <= 2, "a number between 0 and 2"),
    "top_p": (lambda v: _is_number(v) and 0 < v <= 1, "a number in (0, 1]"),
    "frequency_penalty": (lambda v: _is_number(v) and -2 <= v <= 2, "a number between -2 and 2"),
    "presence_penalty": (lambda v: _is_number(v) and -2 <= v <= 2, "a number between -2 and 2"),
    "n": (lambda v: v == 1 and _is_int(v), "1 (one choice per request)"),
    "seed": (_is_int, "an integer"),
    "stream": (lambda v: isinstance(v, bool), "true or false"),
}


def request_error(path: str, body: Any) -> tuple[str, str] | None:
    """(parameter, message) for the first problem of a request ``body`` sent to ``path``, or None if it is fine."""
    if not isinstance(body, dict):
        return "body", f"the request body must be a JSON object, got {type(body).__name__}"
    required = _REQUIRED.get(path)
    if required is not None:
        value = body.get(required)
        if required not in body or value is None:
            return required, f"`{required}` is required"
        if required == "messages":
            if not isinstance(value, list) or not value:
                return required, "`messages` must be a non-empty list of {\"role\": ..., \"content\": ...} objects"
            for index, message in enumerate(value):
                if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                    return required, f"`messages[{index}]` must be an object with a string `role`"
        elif not isinstance(value, (str, list)) or not value:
            return required, f"`{required}` must be a non-empty string or list"
    for field, (check, expected) in _FIELDS.items():
        if body.get(field) is not None and not check(body[field]):
            return field, f"`{field}` must be {expected}, got {json.dumps(body[field])}"
    return None


class RequestValidation:
    """ASGI middleware: :func:`request_error` on the JSON body of :data:`VALIDATED_PATHS`, a 400 for a bad one."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope.get("type") != "http" or scope.get("method") != "POST" or scope.get("path") not in VALIDATED_PATHS:
            await self.app(scope, receive, send)
            return
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client left: let the app see it
                await self.app(scope, _replay([message], receive), send)
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        raw = b"".join(chunks)
        try:
            problem = request_error(scope["path"], json.loads(raw))
        except (ValueError, UnicodeDecodeError) as e:
            problem = ("body", f"the request body is not valid JSON ({e})")
        if problem is None:
            await self.app(scope, _replay([{"type": "http.request", "body": raw, "more_body": False}], receive), send)
            return
        param, text = problem
        payload = json.dumps({"error": {"message": text, "type": "invalid_request_error", "param": param}}).encode()
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]})
        await send({"type": "http.response.body", "body": payload})


def _replay(messages: list[dict], receive):
    """A ``receive`` that first returns ``messages``, then defers to the real one (e.g. for a disconnect)."""
    pending = list(messages)

    async def replayed():
        return pending.pop(0) if pending else await receive()

    return replayed


def install() -> None:
    """Make every app ``transformers serve`` builds (in this process) validate requests with the middleware."""
    from ..compat import serve_app_factory

    module, name = serve_app_factory()
    build = getattr(module, name)
    if getattr(build, "olmo_hf_validates_requests", False):
        return

    def build_validating(*args, **kwargs):
        app = build(*args, **kwargs)
        app.add_middleware(RequestValidation)
        return app

    build_validating.olmo_hf_validates_requests = True
    build_validating.__wrapped__ = build
    setattr(module, name, build_validating)


def uninstall() -> None:
    """Undo :func:`install` (tests)."""
    from ..compat import serve_app_factory

    module, name = serve_app_factory()
    build = getattr(module, name)
    if getattr(build, "olmo_hf_validates_requests", False):
        setattr(module, name, build.__wrapped__)
