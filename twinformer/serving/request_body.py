"""A request body read under a size limit and parsed as the API expects: UTF-8 JSON object, each
failure a 4xx saying what to change (never a traceback, and the server keeps serving)."""

from __future__ import annotations

import json

from fastapi import Request

from twinformer.serving.errors import ApiError, bad_request

DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB: far more than any prompt the models here can read


async def read_json(request: Request, limit: int) -> dict:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _too_large(limit)
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as error:
        raise bad_request(f"the request body is not valid UTF-8 (byte {error.start}): send the JSON encoded as UTF-8",
                          code="invalid_utf8") from error  # fmt: skip
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise bad_request(f"the request body is not valid JSON ({error.msg} at line {error.lineno} column {error.colno})",
                          code="invalid_json") from error  # fmt: skip
    if not isinstance(data, dict):
        raise bad_request("the request body must be a JSON object", code="invalid_json")
    try:  # a \ud800-\udfff escape alone is valid JSON but no text: no tokenizer can read it
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as error:
        raise bad_request("the request holds a lone surrogate escape (\\ud800-\\udfff without its pair): send "
                          "valid Unicode text", code="invalid_utf8") from error  # fmt: skip
    return data


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"the request body exceeds the server's limit of {limit} bytes: send a shorter prompt",
                    code="body_too_large")  # fmt: skip


__all__ = ["DEFAULT_MAX_BODY_BYTES", "read_json"]
