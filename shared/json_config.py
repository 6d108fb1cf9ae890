"""What every config dataclass shares: checked `replace`, and a JSON (file) round trip.

A config class defines `to_dict` / `from_dict` where its fields need more than dataclasses.asdict
(nested configs, tuples); the rest comes from `JsonConfig`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar


class ConfigError(ValueError):
    """A configuration that cannot be used; the message lists every problem found."""


class JsonConfig:
    """Mixin for frozen config dataclasses."""

    error: ClassVar[type[ConfigError]] = ConfigError  # the exception this config raises
    kind: ClassVar[str] = "config"  # how messages name it: "model config", "train config", ...

    @classmethod
    def reject_unknown(cls, fields: dict[str, Any]) -> None:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise cls.error(
                f"unknown {cls.__name__} field(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )

    @classmethod
    def check_object(cls, data: Any) -> None:
        if not isinstance(data, dict):
            raise cls.error(f"a {cls.kind} must be a JSON object, got {type(data).__name__}")

    def replace(self, **overrides: Any):
        self.reject_unknown(overrides)
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        cls.check_object(data)
        cls.reject_unknown(data)
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise cls.error(f"{cls.kind} is not valid JSON: {error}") from error
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{cls.kind} {path} not found")
        try:
            return cls.from_json(path.read_text())
        except cls.error as error:
            raise cls.error(f"{path}: {error}") from error
