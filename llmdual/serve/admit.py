"""From request bytes to a checked request and its prompt ids. Parsing, validation and tokenising are CPU-bound,
so the app runs ``admit`` in a worker thread, never on the event loop; cheap length checks come first."""

from __future__ import annotations

from pydantic import ValidationError

from llmdual.serve.engine import Engine
from llmdual.serve.schema import ApiError, CompletionRequest, lone_surrogate_field


def parse(body: bytes) -> CompletionRequest:
    """The request in ``body``; ``ApiError`` 400 naming the field that is wrong."""
    try:
        return CompletionRequest.model_validate_json(body)
    except ValidationError as exc:
        raise validation_error(exc, body) from None


def validation_error(exc: ValidationError, body: bytes = b"") -> ApiError:
    """The first of pydantic's errors as a 400 naming its field (never echoing the client's text back)."""
    first = exc.errors(include_input=False)[0] if exc.errors() else {"msg": "invalid request", "loc": ()}
    loc = ".".join(str(p) for p in first.get("loc", ()))
    kind = first.get("type", "")
    if kind == "json_invalid":
        field = lone_surrogate_field(body)
        if field is not None:
            return ApiError(400, f"{field}: the text holds a lone surrogate escape (such as \\ud800), which is not "
                                 f"valid Unicode", field, "invalid_unicode")
        return ApiError(400, f"the body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}",
                        None, kind)
    if kind == "extra_forbidden":
        name = loc.encode("utf-8", "backslashreplace").decode()
        return ApiError(400, f"unknown field {name!r}", name, kind)
    if not loc:
        return ApiError(400, f"the body must be a JSON object: {first['msg']}", None, kind or None)
    return ApiError(400, f"{loc}: {first['msg']}", loc, kind or None)


def prompt_ids(req: CompletionRequest, engine: Engine) -> list[int]:
    """The request's prompt as ids, checked against the tokenizer, vocabulary and context; else ``ApiError``.
    Lengths are checked before any per-token work: text too long to fit the context is never tokenised."""
    config = engine.config
    if req.model is not None and req.model != engine.model_id:
        raise ApiError(404, f"model {req.model!r} does not exist; this server serves {engine.model_id!r}",
                       "model", "model_not_found")
    if engine.tokenizer is None and isinstance(req.prompt, str):
        raise ApiError(400, "this server has no tokenizer (start it with --tokenizer); send the prompt as a list "
                            "of token ids", "prompt", "tokenizer_missing")
    if engine.tokenizer is None and req.stops():
        raise ApiError(400, "stop strings need a tokenizer (start the server with --tokenizer)", "stop",
                       "tokenizer_missing")
    if isinstance(req.prompt, str):
        if len(req.prompt) > engine.max_prompt_chars:
            raise ApiError(400, f"the prompt has {len(req.prompt)} characters; at most {engine.max_prompt_chars} "
                                f"could fit the context of {config.max_seq_len} tokens", "prompt",
                           "context_length_exceeded")
        ids = engine.tokenizer.encode_many([req.prompt])[0]  # the batch call releases the GIL while it works
    else:
        ids = req.prompt
    if not ids:
        raise ApiError(400, "the prompt is empty; it needs at least one token", "prompt", "empty_prompt")
    if len(ids) > config.max_seq_len:
        raise ApiError(400, f"the prompt has {len(ids)} tokens, longer than the context of {config.max_seq_len}",
                       "prompt", "context_length_exceeded")
    bad = [i for i in ids if not 0 <= i < config.vocab_size]
    if bad:
        raise ApiError(400, f"token id {bad[0]} is out of range [0, {config.vocab_size})", "prompt",
                       "invalid_token_id")
    if len(ids) + req.max_tokens - 1 > config.max_seq_len:
        raise ApiError(400, f"prompt of {len(ids)} tokens + max_tokens {req.max_tokens} needs "
                            f"{len(ids) + req.max_tokens - 1} positions, more than the context of "
                            f"{config.max_seq_len}", "max_tokens", "context_length_exceeded")
    return ids


def admit(body: bytes, engine: Engine) -> tuple[CompletionRequest, list[int]]:
    """The checked request in ``body`` and its prompt ids; ``ApiError`` for anything the client got wrong."""
    req = parse(body)
    return req, prompt_ids(req, engine)
