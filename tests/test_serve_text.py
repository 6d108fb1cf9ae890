"""The text side of `twinformer serve`: chat templates rendered exactly as transformers renders them,
the book's format for models without one, and OpenAI stop strings matched across token boundaries."""

from __future__ import annotations

import json

import pytest

from tests.serve_support import CHAT_TEMPLATE
from twinformer.serving.chat_template import BOOK_TURN_SEPARATOR, ChatFormat, ChatTemplateError
from twinformer.serving.choices import StopText

CONVERSATION = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Héllo {{ there }}"},
                {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "What is 2+2?"}]  # fmt: skip
# Llama-2-style: bos/eos variables, raise_exception, loop controls, whitespace trimmed by trim/lstrip_blocks.
LLAMA_STYLE = """{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}{% set loop_messages = messages[1:] %}
{% else %}{% set system = '' %}{% set loop_messages = messages %}{% endif %}
{% for message in loop_messages %}
    {% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {% endif %}
    {% if message['role'] == 'user' %}
        {{ bos_token + '[INST] ' + (system + ' ' if loop.first and system else '') + message['content'] | trim + ' [/INST]' }}
    {% else %}
        {{ ' ' + message['content'] | trim + ' ' + eos_token }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}{{ messages[-1] | tojson }}{% endif %}"""


def transformers_render(template: str, messages, tmp_path, **special) -> str:
    """transformers' own apply_chat_template on a tokenizer carrying `template`."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
                                        **special)  # fmt: skip
    tokenizer.chat_template = template
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("template", [CHAT_TEMPLATE, LLAMA_STYLE])
def test_templates_render_as_transformers_renders_them(template, tmp_path):
    special = {"bos_token": "<s>", "eos_token": "</s>"}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": template, **special}))
    ours = ChatFormat.load(tmp_path)
    assert ours.templated
    assert ours.render(CONVERSATION) == transformers_render(template, CONVERSATION, tmp_path, **special)


def test_a_template_that_refuses_the_messages_is_a_clear_error(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": LLAMA_STYLE, "bos_token": "<s>", "eos_token": "</s>"}))
    with pytest.raises(ChatTemplateError, match="roles must alternate"):
        ChatFormat.load(tmp_path).render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_chat_template_jinja_file_wins_and_special_tokens_may_be_dicts(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "ignored",
                                                                "bos_token": {"content": "<s>", "lstrip": False}}))
    (tmp_path / "chat_template.jinja").write_text("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert ChatFormat.load(tmp_path).render([{"role": "user", "content": "hi"}]) == "<s>hi"


def test_models_without_a_template_get_the_books_dialogue_format(tmp_path):
    book = ChatFormat.load(tmp_path)  # no tokenizer_config.json at all (a T5 checkpoint of ours)
    assert not book.templated
    assert book.render([{"role": "user", "content": "Summarize: a <BR> b"}]) == "Summarize: a <BR> b"
    turns = [m["content"] for m in CONVERSATION]
    assert book.render(CONVERSATION) == BOOK_TURN_SEPARATOR.join(turns)


class Pieces:
    """A TextStream stand-in: token i is the text pieces[i]."""

    def __init__(self, pieces):
        self.pieces = pieces

    def push(self, token):
        return self.pieces[token]

    def flush(self):
        return ""


@pytest.mark.parametrize("pieces, stops, shown, stopped", [
    (["Hel", "lo ", "wor", "ld"], ["lo w"], "Hel", True),  # a stop string over three tokens
    (["Hel", "lo ", "wor", "ld"], ["xyz"], "Hello world", False),
    (["ab", "c", "d"], ["cd", "bc"], "a", True),  # the earliest match wins
    (["ab", "c", "d"], ["cx"], "abcd", False),  # held back while it might start a stop, then released
])  # fmt: skip
def test_stop_strings_are_matched_on_the_text_across_tokens(pieces, stops, shown, stopped):
    text = StopText(Pieces(pieces), stops)
    out = "".join(text.push(i) for i in range(len(pieces))) + text.flush()
    assert (out, text.stopped) == (shown, stopped)


def test_held_back_text_is_never_shown_early():
    text = StopText(Pieces(["ab", "c"]), ["bcd"])
    assert text.push(0) == "a"  # "b" might begin "bcd"
    assert text.push(1) == ""  # "bc" still might
    assert text.flush() == "bc"
