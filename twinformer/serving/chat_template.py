"""Chat messages -> one prompt string, as the served model expects it.

A checkpoint with a chat template (`chat_template` in tokenizer_config.json, or a chat_template.jinja
file, as transformers saves them) gets it rendered the way transformers' `apply_chat_template` does:
jinja2's ImmutableSandboxedEnvironment with trim_blocks and lstrip_blocks, the loopcontrols
extension, `raise_exception`, `strftime_now` and a `tojson` filter that keeps non-ASCII, the
tokenizer's special tokens (bos_token, eos_token, ...) as variables, and add_generation_prompt=True.
The rendered text already holds the special tokens the template wants, so it is encoded without
the tokenizer adding any (as transformers does).

Models without a template (T5 and the book's models) get the book's format: the turns' texts in
order joined by " <BR> ", the turn separator of the TweetSum dialogues the chapter-5 adapter was
trained on (no role names: those dialogues have none). One message is sent as it is, so a chat
message "Summarize: <dialogue>" is exactly the chapter-5 prompt `twinformer summarize` gives the model.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

BOOK_TURN_SEPARATOR = " <BR> "
TEMPLATE_FILE = "chat_template.jinja"
CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


class ChatTemplateError(ValueError):
    """The template refused the conversation (its raise_exception) or failed to render."""


def _token_text(value) -> str | None:
    if isinstance(value, dict):  # {"content": "<s>", ...} as older tokenizer_config.json files write them
        return value.get("content")
    return value if isinstance(value, str) else None


class ChatFormat:
    """messages [{"role", "content"}] -> prompt text; `templated` says whether a model template is used."""

    def __init__(self, template: str | None = None, special_tokens: dict[str, str] | None = None):
        self.templated = template is not None
        self.special_tokens = special_tokens or {}
        self._compiled = _compile(template) if template is not None else None

    @classmethod
    def load(cls, checkpoint: Path) -> "ChatFormat":
        checkpoint = Path(checkpoint)
        config = {}
        if (checkpoint / CONFIG_FILE).is_file():
            config = json.loads((checkpoint / CONFIG_FILE).read_text(encoding="utf-8"))
        template = config.get("chat_template")
        if (checkpoint / TEMPLATE_FILE).is_file():
            template = (checkpoint / TEMPLATE_FILE).read_text(encoding="utf-8")
        if isinstance(template, list):  # named templates [{"name", "template"}]: transformers uses "default"
            named = {entry.get("name"): entry.get("template") for entry in template if isinstance(entry, dict)}
            template = named.get("default")
        special = {name: text for name in SPECIAL_TOKEN_NAMES if (text := _token_text(config.get(name))) is not None}
        return cls(template if isinstance(template, str) else None, special)

    def render(self, messages: list[dict[str, str]]) -> str:
        if self._compiled is None:
            return BOOK_TURN_SEPARATOR.join(message["content"] for message in messages)
        import jinja2

        try:
            return self._compiled.render(messages=messages, add_generation_prompt=True, tools=None, documents=None,
                                         **self.special_tokens)  # fmt: skip
        except jinja2.TemplateError as error:
            raise ChatTemplateError(f"the model's chat template refused the messages: {error}") from error


def _compile(template: str):
    """transformers' _compile_jinja_template (utils/chat_template_utils.py); its {% generation %} block
    (which marks assistant tokens for training masks) renders its body, as transformers' does when
    no tracking is asked for."""
    import jinja2
    from jinja2.ext import Extension, loopcontrols

    class GenerationBlock(Extension):
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):
            return caller()
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    def strftime_now(format):
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    try:
        return env.from_string(template)
    except jinja2.TemplateError as error:
        raise ChatTemplateError(f"the checkpoint's chat template does not compile: {error}") from error


__all__ = ["BOOK_TURN_SEPARATOR", "ChatFormat", "ChatTemplateError"]
