"""OpenAI-style error bodies for the routes we add (vLLM's own routes use vLLM's)."""

from __future__ import annotations


def error_body(message: str, err_type: str, code: int, param: str | None = None) -> dict:
    """`{"error": {"message", "type", "param", "code"}}`, the shape OpenAI clients parse."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def error_response(message: str, code: int, param: str | None = None):
    """A JSONResponse with `error_body`; the type follows the status code."""
    from fastapi.responses import JSONResponse

    return JSONResponse(error_body(message, error_type(code), code, param), status_code=code)


def error_type(code: int) -> str:
    """OpenAI's error type for an HTTP status code."""
    return {400: "BadRequestError", 404: "NotFoundError", 409: "ConflictError",
            413: "RequestTooLargeError", 429: "RateLimitError",
            503: "ServiceUnavailableError"}.get(code, "InternalServerError")
