"""The request body of ``POST /v1/completions`` and OpenAI-style error bodies."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictBool, StrictInt, field_validator
from pydantic_core import PydanticCustomError

StrictFloat = Annotated[float, Strict()]  # a JSON number, ints included; never a string or a boolean
MAX_STOPS = 4


def _json_kind(value: Any) -> str:
    """What ``value`` is called in JSON, for messages that must not echo the client's data back."""
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
             dict: "an object", type(None): "null"}
    return names.get(type(value), type(value).__name__)


class CompletionRequest(BaseModel):
    """OpenAI's completion fields the server supports (unknown fields are rejected); ``top_k`` is an extension."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt: str | list[StrictInt]
    model: str | None = None
    max_tokens: StrictInt = Field(16, ge=1)
    temperature: StrictFloat = Field(1.0, ge=0.0, le=2.0)
    top_p: StrictFloat | None = Field(None, gt=0.0, le=1.0)
    top_k: StrictInt | None = Field(None, ge=1)
    seed: StrictInt | None = Field(None, ge=0)
    stop: str | list[str] | None = None
    stream: StrictBool = False

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt(cls, value: Any) -> Any:
        """One prompt: text, or integer token ids (a batch of prompts is refused by name)."""
        if isinstance(value, str):
            return value
        if not isinstance(value, list):
            raise PydanticCustomError("prompt_type", "must be a string or a list of integer token ids, got "
                                                     f"{_json_kind(value)}")
        if value and all(isinstance(v, (str, list)) for v in value):
            raise PydanticCustomError("batch_unsupported", "a list of prompts (a batch) is not supported; send "
                                                           "one prompt (a string or a list of token ids) per request")
        bad = next((i for i, v in enumerate(value) if type(v) is not int), None)
        if bad is not None:
            shown = json.dumps(value[bad]) if isinstance(value[bad], (bool, float)) else _json_kind(value[bad])
            raise PydanticCustomError("token_id_type", f"token ids must be integers, not booleans, floats or "
                                                       f"strings; item {bad} is {shown}")
        return value

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, value: Any) -> Any:
        """None, one string or up to ``MAX_STOPS`` strings, none empty."""
        stops = [value] if isinstance(value, str) else value
        if value is not None and (not isinstance(stops, list) or len(stops) > MAX_STOPS
                                  or not all(isinstance(s, str) and s for s in stops)):
            raise PydanticCustomError("invalid_stop", f"must be a non-empty string or a list of up to {MAX_STOPS} "
                                                      f"non-empty strings, got {_json_kind(value)}")
        return value

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


def lone_surrogate_field(body: bytes) -> str | None:
    """The top-level field of a JSON object whose text holds a lone surrogate escape (``"\\ud800"``: valid JSON
    to Python, but not Unicode text), or None."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    for key, value in data.items() if isinstance(data, dict) else ():
        try:
            json.dumps([key, value], ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            return key.encode("utf-8", "backslashreplace").decode()
    return None
