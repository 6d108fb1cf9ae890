"""The OpenAI request fields `twinformer serve` reads (pydantic), with the limits that make a request
one this server can run; unknown fields are ignored, as OpenAI-compatible servers do."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_N = 8  # choices per request: each is a decode of its own; more is a typo or an abuse
MAX_STOP = 4  # stop strings, as OpenAI allows
DEFAULT_MAX_TOKENS = 200  # the book's chatbot: at most 200 new tokens (capped by the model's room)


class SamplingFields(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None, ge=1, description="new tokens at most (default: 200, or the room left)")
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)  # 0: greedy
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stop: str | list[str] | None = Field(default=None, validate_default=True)  # -> list[str]
    stream: bool = False
    stream_options: dict | None = None
    seed: int | None = Field(default=None, ge=0, lt=2**63)

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else list(value or [])
        if len(stops) > MAX_STOP or any(not s for s in stops):
            raise ValueError(f"give at most {MAX_STOP} non-empty stop strings")
        return stops

    @property
    def new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class CompletionRequest(SamplingFields):
    prompt: str | list[str]


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    @property
    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatRequest(SamplingFields):
    messages: list[Message] = Field(min_length=1)


__all__ = ["DEFAULT_MAX_TOKENS", "MAX_N", "ChatRequest", "CompletionRequest", "Message"]
