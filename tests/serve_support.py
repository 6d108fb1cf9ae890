"""What the `twinformer serve` tests share: tiny random checkpoints (a T5 with a LoRA adapter and a
GPT-2 with a chat template, each with its tokenizer) and a server on a free loopback port in a thread."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np

TEXTS = ["the cat sat on the mat", "a dog ran in the park", "the sun is bright today",
         "Summarize: my phone does not record my steps any more", "customer lost a bag after a delayed flight"]  # fmt: skip
# A ChatML-style template, as Qwen's and many others' tokenizer_config.json carry one.
CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
                 "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
                 "{% endif %}")  # fmt: skip


def make_t5(root: Path) -> tuple[Path, Path]:
    """(checkpoint, LoRA adapter) of a random tiny flan-t5 with a T5-style tokenizer; the adapter's B is
    not zero, so that it changes the model's output."""
    from shared.checkpoints.adapter_io import expected_adapter_shapes, save_adapter
    from shared.checkpoints.checkpoint import save_checkpoint
    from shared.checkpoints.init import initial_tensors
    from shared.checkpoints.lora_config import LoRAConfig
    from shared.config.model_config import ModelConfig
    from shared.data.t5_tokenizer import train_t5_tokenizer

    tokenizer = train_t5_tokenizer(TEXTS * 3, vocab_size=60)
    config = ModelConfig.from_preset(
        "flan-t5-small", d_model=16, num_heads=2, head_size=8, d_ff=24, num_encoder_layers=1, num_decoder_layers=1,
        src_vocab_size=tokenizer.vocab_size, tgt_vocab_size=tokenizer.vocab_size, max_len=32,
        dropout=0.0, attention_dropout=0.0, embedding_dropout=0.0,
    )  # fmt: skip
    tensors = initial_tensors(config, seed=0)
    tensors = {k: v * 8 if v.ndim == 2 else v for k, v in tensors.items()}  # peaked: tokens depend on the input
    checkpoint = root / "t5"
    save_checkpoint(checkpoint, config, tensors)
    tokenizer.save(checkpoint)
    lora = LoRAConfig(r=2, alpha=4, dropout=0.0, target_modules=("q_proj", "v_proj"))
    rng = np.random.default_rng(1)
    adapter = {key: (rng.standard_normal(shape) * 2).astype(np.float32)
               for key, shape in expected_adapter_shapes(config, lora).items()}  # fmt: skip
    save_adapter(root / "t5-adapter", config, lora, adapter)
    return checkpoint, root / "t5-adapter"


def make_gpt2(root: Path) -> Path:
    """A random tiny GPT-2 (byte-level BPE trained here) converted with `convert --from hf`, with a chat template."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from twinformer.cli import main

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))  # fmt: skip
    config = transformers.GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                     bos_token_id=0, eos_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # peaked attention, so the tokens depend on the positions
        for parameter in hf.parameters():
            parameter.mul_(4.0)
    hf.save_pretrained(root / "gpt2-hf")
    tok.save(str(root / "gpt2-hf" / "tokenizer.json"))
    (root / "gpt2-hf" / "tokenizer_config.json").write_text(json.dumps(
        {"chat_template": CHAT_TEMPLATE, "eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>"}))
    assert main(["convert", "--from", "hf", str(root / "gpt2-hf"), str(root / "gpt2")]) == 0
    return root / "gpt2"


class ThreadServer:
    """uvicorn serving `app` on 127.0.0.1 at a free port, in a thread (stop(): what SIGTERM does)."""

    def __init__(self, app):
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 60) -> None:
        self.server.should_exit = True  # uvicorn's SIGTERM handler sets exactly this
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the server did not stop"
