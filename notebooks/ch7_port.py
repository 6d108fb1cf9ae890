# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Chapter 7: porting a Hugging Face checkpoint into JAX, checking it, and exporting it back
#
# A user has a Llama-style checkpoint saved by transformers and wants it in JAX. The workflow:
# `twinformer convert --from hf` writes our checkpoint (read by both stacks), `twinformer parity
# --against hf` runs transformers' own model beside ours on the same padded prompt, module by
# module, and names the first module where they part; `twinformer export --to hf` writes it back,
# and the round trip gives the very same tensors, byte for byte. Along the way we plant the most
# common porting bug, a wrong RoPE theta, and find it from the report alone.
#
# Everything runs offline on a tiny random Llama (2 layers, d_model 32) so the notebook takes seconds.

# %%
import contextlib
import io
import json
import re
import tempfile
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import torch
import transformers
from safetensors.numpy import load_file

import jax_impl
import torch_impl
from _check import agree, same
from jax_impl.generate import generate as jax_generate
from shared.checkpoints.checkpoint import load_checkpoint, save_checkpoint
from shared.decoding.generation import GenerationConfig
from torch_impl.generate import generate as torch_generate
from twinformer.cli import main as twinformer
from twinformer.devices import pin_precision

pin_precision("float32")
torch.set_num_threads(1)
workdir = Path(tempfile.mkdtemp())


def cli(*argv: str) -> tuple[int, str]:
    """Run a `twinformer` command in this process: (exit status, what it printed)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = twinformer([str(a) for a in argv])
    print(out.getvalue().rstrip())
    return status, out.getvalue()


# %% [markdown]
# ## The checkpoint to port
#
# A random Llama saved by transformers, as a downloaded one would be: `config.json` +
# `model.safetensors`. RoPE theta is Llama 3's 500000, not the 10000 of older Llamas, and the key-value
# heads are grouped (4 query heads share 2). The weights are drawn wider than HF's init so attention
# is peaked and every token depends on its position (with near-uniform attention, a rope bug hides).

# %%
hf_config = transformers.LlamaConfig(
    vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=128, rope_theta=500000.0, rms_norm_eps=1e-5,
    tie_word_embeddings=False, initializer_range=0.3, bos_token_id=1, eos_token_id=2,
)
torch.manual_seed(0)
hf_model = transformers.LlamaForCausalLM(hf_config).eval()
hf_dir = workdir / "hf"
hf_model.save_pretrained(hf_dir)
print(sorted(p.name for p in hf_dir.iterdir()))

# %% [markdown]
# ## Into our format
#
# `convert --from hf` reads HF's config and renames each tensor through the family's HF table
# (shared/families/causal_lm/), never casting: a float32 file stays float32. The result is one
# checkpoint that both stacks load.

# %%
status, _ = cli("convert", "--from", "hf", hf_dir, workdir / "port")
assert status == 0

# %% [markdown] concept="load"
# ## Loading the port in each stack
#
# PyTorch builds the module on the meta device and assigns the tensors; JAX places each tensor as a
# param leaf. The same prompt through both must give the same logits (within float32 rounding).

# %% concept="load" side="torch"
prompt = np.array([[1, 17, 42, 5, 88, 23, 9, 61, 30, 12, 7, 54]], dtype=np.int64)  # (B, T)
torch_model = torch_impl.load(workdir / "port")
with torch.no_grad():
    torch_logits = torch_model(torch.as_tensor(prompt))  # (B, T, V)

# %% concept="load" side="jax"
jax_model, params = jax_impl.load(workdir / "port")
jax_logits = jax_model.apply({"params": params}, jnp.asarray(prompt))  # (B, T, V)

# %% concept="load" side="check"
agree("converted port: logits, torch vs jax", torch_logits, jax_logits)
with torch.no_grad():
    agree("converted port: torch vs transformers", hf_model(torch.as_tensor(prompt)).logits, torch_logits)

# %% [markdown]
# ## A port with a bug in it
#
# Hand-written converters often miss one config field. Ours below "forgets" RoPE theta and keeps
# the old default of 10000; every tensor is right. Nothing crashes: the model loads and generates
# fluent-looking tokens. Only a comparison can tell.

# %%
config, tensors = load_checkpoint(workdir / "port")
save_checkpoint(workdir / "buggy", config.replace(rope_theta=10000.0), tensors)

# %% [markdown]
# ## What `parity --against hf` says
#
# The report lists, in forward order, each module's max |ours − transformers| against the
# scale-aware bound (shared/parity/tolerances.py), then the first module where they part, and the
# next-token KL and top-1 agreement. The prompt is 64 tokens, batch 2, one row left-padded.

# %%
status, report = cli("parity", "--against", "hf", hf_dir, "--checkpoint", workdir / "buggy", "--prompt-len", 64)
parting = re.search(r"first module where our stacks part from transformers: (\S+)", report).group(1)
print("exit", status, "| parts at", parting)
assert status == 1 and parting == "layers.0.self_attn.o_proj"

# %% [markdown]
# ## Reading the report
#
# `q_proj`, `k_proj` and `v_proj` of layer 0 agree; its `o_proj` does not. Between them lies what
# attention computes without weights of its own: the rotary positions, the mask and the softmax.
# The mask and softmax are shared with every other family, which pass; the rotary positions come
# from the config. Compare the config's rope fields with HF's:

# %%
hf_saved = json.loads((hf_dir / "config.json").read_text())
hf_theta = hf_saved.get("rope_theta") or hf_saved["rope_parameters"]["rope_theta"]
buggy_config, _ = load_checkpoint(workdir / "buggy")
print("transformers:", hf_theta, "| our port:", buggy_config.rope_theta)
assert hf_theta != buggy_config.rope_theta

# %% [markdown]
# ## The fix, checked
#
# With theta set from HF's config the report is clean: every module within its bound, exit 0,
# and top-1 agreement 1.0 in both stacks.

# %%
save_checkpoint(workdir / "fixed", buggy_config.replace(rope_theta=float(hf_theta)), tensors)
status, report = cli("parity", "--against", "hf", hf_dir, "--checkpoint", workdir / "fixed", "--prompt-len", 64)
assert status == 0 and report.count("top-1 agreement 1.0000") == 2

# %% [markdown] concept="greedy"
# ## Greedy decoding of the fixed port
#
# Each stack's one generation loop (KV cache, the contract of shared/decoding/generation.py) picks
# the same tokens, and so does transformers' `generate`.

# %% concept="greedy" side="torch"
greedy = GenerationConfig(max_new_tokens=8)  # stops at the model's eos (2), as transformers does
fixed_torch = torch_impl.load(workdir / "fixed")
torch_tokens = torch_generate(fixed_torch, prompt, None, greedy)  # (B, 8)

# %% concept="greedy" side="jax"
fixed_model, fixed_params = jax_impl.load(workdir / "fixed")
jax_tokens = jax_generate(fixed_model, fixed_params, prompt, None, greedy)  # (B, 8)

# %% concept="greedy" side="check"
same("greedy tokens, torch vs jax", torch_tokens, jax_tokens)
with torch.no_grad():
    hf_tokens = hf_model.generate(torch.as_tensor(prompt), max_new_tokens=8, do_sample=False)
same("greedy tokens, torch vs transformers", torch_tokens, hf_tokens[:, prompt.shape[1]:])
agree("fixed port: last logits, torch vs jax", fixed_torch(torch.as_tensor(prompt)).detach()[:, -1],
      fixed_model.apply({"params": fixed_params}, jnp.asarray(prompt))[:, -1])

# %% [markdown]
# ## Back to Hugging Face
#
# `export --to hf` renames back and writes `config.json` + `model.safetensors` that transformers
# loads. Tensors are never cast and only renamed, so the round trip HF -> ours -> HF gives every
# tensor back byte for byte, and the same config fields.

# %%
status, _ = cli("export", "--to", "hf", workdir / "fixed", workdir / "hf_back")
assert status == 0
before, after = load_file(hf_dir / "model.safetensors"), load_file(workdir / "hf_back" / "model.safetensors")
assert sorted(before) == sorted(after) and all(before[k].dtype == after[k].dtype for k in before)
same(f"round trip HF -> ours -> HF, all {len(before)} tensors", b"".join(before[k].tobytes() for k in sorted(before)),
     b"".join(after[k].tobytes() for k in sorted(after)))
back_config = transformers.AutoConfig.from_pretrained(workdir / "hf_back")
for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "rms_norm_eps",
              "tie_word_embeddings", "vocab_size"):
    assert getattr(back_config, field) == getattr(hf_model.config, field), field
reloaded = transformers.AutoModelForCausalLM.from_pretrained(workdir / "hf_back").eval()
with torch.no_grad():
    same("exported model: logits bytes", hf_model(torch.as_tensor(prompt)).logits.numpy().tobytes(),
         reloaded(torch.as_tensor(prompt)).logits.numpy().tobytes())
