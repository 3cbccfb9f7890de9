"""The request body of ``POST /v1/completions`` and OpenAI-style error bodies."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt


class CompletionRequest(BaseModel):
    """OpenAI's completion fields the server supports (unknown fields are rejected); ``top_k`` is an extension."""

    model_config = ConfigDict(extra="forbid")

    prompt: str | list[StrictInt]
    model: str | None = None
    max_tokens: StrictInt = Field(16, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: StrictInt | None = Field(None, ge=1)
    seed: StrictInt | None = None
    stop: str | list[str] | None = None
    stream: StrictBool = False

    def stops(self) -> list[str]:
        """The stop strings as a list (none empty)."""
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class ApiError(Exception):
    """A request the server refuses: HTTP ``status`` and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        """``{"error": {"message", "type", "param", "code"}}``."""
        return error_body(self.message, self.kind, self.param, self.code)


def error_body(message: str, kind: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """The OpenAI error object."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
