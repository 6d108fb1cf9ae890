"""OpenAI-style errors: {"error": {"message", "type", "param", "code"}} with a 4xx (the client's to
fix, and the message says how) or a 5xx status. Raised anywhere in a handler as `ApiError`."""

from __future__ import annotations

from fastapi.responses import JSONResponse


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 type: str | None = None):  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, code=code, param=param)


def validation_error(error) -> ApiError:
    """A pydantic ValidationError -> 400 naming the first bad field and what it must be."""
    first = error.errors()[0]
    param = ".".join(str(part) for part in first["loc"]) or None
    message = first["msg"]
    if first["type"] == "missing":
        message = "a required field is missing"
    return bad_request(f"{param}: {message}" if param else message, param=param, code="invalid_value")


__all__ = ["ApiError", "bad_request", "validation_error"]
