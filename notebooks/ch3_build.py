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
# # Chapter 3: building the Transformer, object-oriented and functional
#
# The book's chapter 3 builds an encoder-decoder Transformer piece by piece in PyTorch. This
# notebook walks the same pieces through both stacks of this project: `torch_impl` (PyTorch
# `nn.Module`s: each object owns its parameters and its train/eval mode) and `jax_impl` (Flax
# Linen: a module is a description; parameters are a separate pytree passed in at every call).
#
# Every concept below is a **torch** cell, then a **JAX** cell, then a **check** cell that runs
# both on the same inputs and asserts they agree within the project's float32 tolerance
# (`shared/parity/tolerances.py`, through `notebooks/_check.py`). The modules are the project's own,
# imported, never copied. Sizes are tiny so the notebook runs in seconds on a CPU.
#
# Axis letters (`shared/parity/axes.py`): B batch, S source length, T target length, D model width,
# H heads, K head size, F feed-forward width, V vocabulary.

# %%
import jax
import jax.numpy as jnp
import numpy as np
import torch

import jax_impl
import torch_impl
from _check import agree, same
from shared.config.model_config import ModelConfig
from twinformer.devices import pin_precision

pin_precision("float32")  # full float32 matmuls in both frameworks (PARITY_PITFALLS item 1)

# The book's model A in miniature: bias-free Linears, the chapter-3 norm, post-LN, ReLU, no tying.
config = ModelConfig(
    src_vocab_size=13, tgt_vocab_size=11, d_model=16, num_heads=2, d_ff=32,
    num_encoder_layers=2, num_decoder_layers=2, max_len=12,
    dropout=0.2, attention_dropout=0.2, embedding_dropout=0.1,
    bias=False, norm_kind="book", norm_placement="post", activation="relu",
)

# One set of weights for both stacks: the shared numpy init plus noise, so that norm scales and
# biases are not 1 and 0 (a swapped scale and bias would otherwise go unnoticed).
from shared.checkpoints.init import initial_tensors

rng = np.random.default_rng(0)
tensors = {k: (v + 0.1 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in initial_tensors(config, seed=0).items()}
torch_model = torch_impl.from_numpy(config, tensors).eval()  # an object holding its weights
jax_model = jax_impl.Transformer(config)  # a description: holds no weights
params = jax_impl.params_from_state_dict(config, tensors)  # the weights, a nested dict of arrays

# A batch: row 1 is padded (pad id 0) in source and target.
src = np.array([[5, 6, 7, 8, 9, 10, 2], [5, 11, 12, 2, 0, 0, 0]], dtype=np.int32)  # (B, S)
tgt = np.array([[1, 4, 5, 6, 7], [1, 8, 9, 0, 0]], dtype=np.int32)  # (B, T)
src_t, tgt_t = torch.as_tensor(src, dtype=torch.long), torch.as_tensor(tgt, dtype=torch.long)

# %% [markdown] concept="parameters"
# ## Where the parameters live
#
# In PyTorch each `nn.Module` owns its `nn.Parameter`s; `named_parameters()` walks the object tree.
# In Flax the module tree only *describes* the shapes; `params` is a plain nested dict that you
# pass to `apply`. Both trees use the same attribute names (`encoder.layers.0.self_attn.q_proj`),
# so a key differs only in `layers.0` vs `layers_0` and the leaf name (`weight` vs `kernel`, with
# a transpose for Linear layers): `shared/checkpoints/weight_table.py` is that whole mapping.

# %% concept="parameters" side="torch"
torch_keys = [name for name, _ in torch_model.named_parameters()]
print(len(torch_keys), "tensors, e.g.", torch_keys[2], tuple(torch_model.get_parameter(torch_keys[2]).shape))

# %% concept="parameters" side="jax"
from flax.traverse_util import flatten_dict

jax_paths = ["/".join(path) for path in flatten_dict(params)]
print(len(jax_paths), "leaves, e.g.", jax_paths[2])
print("kernel layout (in, out):", params["encoder"]["layers_0"]["self_attn"]["q_proj"]["kernel"].shape)

# %% concept="parameters" side="check"
# Back from Flax to PyTorch names and layouts: every tensor comes back bit for bit.
back = jax_impl.state_dict_from_params(config, params)
mine = torch_impl.state_dict_numpy(torch_model)
assert sorted(back) == sorted(mine) and len(back) == len(torch_keys) == len(jax_paths)
same("every parameter, torch -> Flax -> torch", np.concatenate([back[k].ravel() for k in sorted(back)]),
     np.concatenate([mine[k].ravel() for k in sorted(mine)]))

# %% [markdown] concept="embedding"
# ## Embedding and positional encoding
#
# Token ids become vectors through a lookup table (`nn.Embedding` / `nn.Embed`), then the fixed
# interleaved sinusoid is added (even dims sin, odd dims cos, angle pos / 10000^(2i/D)), then
# dropout. The table is computed once, in float64, by `shared.parity.numerics.sinusoid_table`: torch keeps
# it as a non-persistent buffer (state that is not a parameter and not saved); the Flax model folds
# it into the compiled program as a constant. Both call the model's own embedding step (`_embed`,
# the helper behind `encode`).

# %% concept="embedding" side="torch"
with torch.no_grad():  # eval mode (set above): embedding dropout is off
    embedded_t = torch_model._embed(torch_model.src_embed, src_t)  # (B, S, D)
print("positional buffer:", tuple(torch_model.pos_encoding.table.shape), "persistent:",
      "pos_encoding.table" in torch_model.state_dict())

# %% concept="embedding" side="jax"
embedded_j = jax_model.apply(
    {"params": params}, src, method=lambda m, ids: m._embed(m.src_embed, ids, deterministic=True)
)  # (B, S, D); `method` runs any function of the bound module

# %% concept="embedding" side="check"
agree("embedding + sinusoid", embedded_t, embedded_j)

# %% [markdown] concept="masks"
# ## Masks: padding and causal
#
# `True` marks a key that may be attended. The padding mask (B, 1, L) hides pad tokens from every
# query; the decoder's causal mask (B, T, T) also hides the future. Both stacks build them from the
# ids with the same two functions (one per framework, same names).

# %% concept="masks" side="torch"
from torch_impl.families.transformer import causal_mask as torch_causal, padding_mask as torch_padding

src_mask_t = torch_padding(src_t, config.pad_id)  # (B, 1, S)
tgt_mask_t = torch_causal(tgt_t, config.pad_id)  # (B, T, T)
print(tgt_mask_t[1].int())

# %% concept="masks" side="jax"
from jax_impl.families.transformer import causal_mask as jax_causal, padding_mask as jax_padding

src_mask_j = jax_padding(jnp.asarray(src), config.pad_id)  # (B, 1, S)
tgt_mask_j = jax_causal(jnp.asarray(tgt), config.pad_id)  # (B, T, T)

# %% concept="masks" side="check"
same("padding mask", src_mask_t, src_mask_j)
same("causal mask", tgt_mask_t, tgt_mask_j)

# %% [markdown] concept="sdpa"
# ## Scaled dot-product attention
#
# softmax(Q Kᵀ / √K, masked) V. Both libraries ship it: `F.scaled_dot_product_attention` takes
# (B, H, T, K); `jax.nn.dot_product_attention` takes (B, T, H, K). They agree on every row that
# has at least one visible key. **Pitfall (PARITY_PITFALLS item 6):** a row whose keys are all
# masked has no right answer, and the libraries differ there (torch 2.13's returns zeros, JAX's
# the mean of V); a hand-written `-inf` fill gives NaN. The project's `MultiHeadAttention` fills
# masked scores with the dtype's finite minimum (`shared.parity.numerics.mask_fill_value`) in both
# stacks, so such a row is a uniform average in both: see the multi-head cell.

# %% concept="sdpa" side="torch"
import torch.nn.functional as F

qkv = np.random.default_rng(1).standard_normal((3, 2, 2, 5, 8)).astype(np.float32)  # q, k, v: (B, H, L, K)
mask = np.ones((2, 1, 5, 5), dtype=bool)  # (B, 1, T, S)
mask[1, :, :, 3:] = False  # row 1: the last two keys are padding
mask[1, :, 4, :] = False  # ... and query 4 sees no key at all
q_t, k_t, v_t = (torch.as_tensor(a) for a in qkv)
attended_t = F.scaled_dot_product_attention(q_t, k_t, v_t, attn_mask=torch.as_tensor(mask))  # (B, H, T, K)

# %% concept="sdpa" side="jax"
q_j, k_j, v_j = (jnp.asarray(a).transpose(0, 2, 1, 3) for a in qkv)  # (B, L, H, K): JAX's layout
attended_j = jax.nn.dot_product_attention(q_j, k_j, v_j, mask=jnp.asarray(mask))  # (B, T, H, K)
attended_j = attended_j.transpose(0, 2, 1, 3)  # back to (B, H, T, K)

# %% concept="sdpa" side="check"
seen = mask[:, 0].any(axis=-1)  # (B, T): queries with at least one visible key
agree("attention, rows with a visible key", attended_t.numpy().transpose(0, 2, 1, 3)[seen],
      np.asarray(attended_j).transpose(0, 2, 1, 3)[seen])
print("fully masked row, torch:", attended_t[1, 0, 4].numpy().round(3), " jax:", np.asarray(attended_j)[1, 0, 4].round(3))

# %% [markdown] concept="multi_head"
# ## Multi-head attention
#
# Project Q, K, V (separate `q_proj`, `k_proj`, `v_proj`), split D into H heads of size K, attend,
# merge the heads, project with `out_proj`. In PyTorch the layer is an object you call; in Flax you
# call `apply` with the layer's own slice of the params pytree (`params[...]["self_attn"]`), and
# say `deterministic=True` where torch would rely on `.eval()`.

# %% concept="multi_head" side="torch"
x = np.random.default_rng(2).standard_normal((2, 7, 16)).astype(np.float32)  # (B, S, D)
all_pad = torch.zeros(1, 1, 7, dtype=torch.bool)  # a row whose keys are all padding
mha_t = torch_model.encoder.layers[0].self_attn  # a MultiHeadAttention object, weights inside
with torch.no_grad():
    mha_out_t = mha_t(torch.as_tensor(x), torch.as_tensor(x), src_mask_t)  # (B, S, D)
    fully_masked_t = mha_t(torch.as_tensor(x[:1]), torch.as_tensor(x[:1]), all_pad)

# %% concept="multi_head" side="jax"
from jax_impl.families.transformer import book_attention

mha_params = {"params": params["encoder"]["layers_0"]["self_attn"]}  # this layer's slice of the pytree
mha_j = book_attention(config, None, "math")  # jax_impl.attention.Attention, the book's options
mha_out_j = mha_j.apply(mha_params, x, x, src_mask_j, deterministic=True)  # (B, S, D)
fully_masked_j = mha_j.apply(mha_params, x[:1], x[:1], jnp.zeros((1, 1, 7), bool), deterministic=True)

# %% concept="multi_head" side="check"
agree("multi-head attention", mha_out_t, mha_out_j)
agree("all keys masked (uniform attention, finite)", fully_masked_t, fully_masked_j)
assert np.isfinite(fully_masked_t.numpy()).all()

# %% [markdown] concept="norm"
# ## The norm: the book's vs LayerNorm
#
# The book's chapter-3 norm is `γ (x − mean) / (std + eps) + β` with the **unbiased** std (divide by
# D − 1) and eps added **outside** the root; `LayerNorm` is `γ (x − mean) / √(var + eps) + β` with the
# biased variance. `ModelConfig.norm_kind` picks one (and `norm_eps` is always explicit: Flax's
# LayerNorm defaults to 1e-6, torch's to 1e-5, PARITY_PITFALLS item 3). Torch calls the weight
# `weight`, Flax `scale`.

# %% concept="norm" side="torch"
from torch_impl.layers import Norm as TorchNorm

norm_t = torch_model.encoder.layers[0].self_attn_norm  # config.norm_kind == "book"
layernorm_t = TorchNorm(config.replace(norm_kind="layernorm"))
layernorm_t.load_state_dict(norm_t.state_dict())  # same γ and β
with torch.no_grad():
    book_out_t, ln_out_t = norm_t(torch.as_tensor(x)), layernorm_t(torch.as_tensor(x))

# %% concept="norm" side="jax"
from jax_impl.layers import Norm as JaxNorm

norm_params = {"params": params["encoder"]["layers_0"]["self_attn_norm"]}  # {"scale", "bias"}
book_out_j = JaxNorm(config).apply(norm_params, x)
ln_out_j = JaxNorm(config.replace(norm_kind="layernorm")).apply(norm_params, x)

# %% concept="norm" side="check"
agree("book norm", book_out_t, book_out_j)
agree("LayerNorm", ln_out_t, ln_out_j)
gap = float(np.abs(book_out_t.numpy() - ln_out_t.numpy()).max())
print(f"book norm vs LayerNorm on the same input: {gap:.3f} apart")
assert gap > 1e-2  # std_unbiased = std * sqrt(D / (D - 1)): 3% at D = 16, far above the tolerance

# %% [markdown] concept="ffn"
# ## Position-wise feed-forward network
#
# `fc2(dropout(relu(fc1(x))))`, D → F → D, the same at every position. Flax's dropout needs to be
# told `deterministic`; torch's follows the module's mode.

# %% concept="ffn" side="torch"
with torch.no_grad():
    ffn_out_t = torch_model.encoder.layers[0].ffn(torch.as_tensor(x))  # (B, S, D)

# %% concept="ffn" side="jax"
from jax_impl.families.transformer import book_ffn  # jax_impl.layers.FeedForward with the book's names

ffn_params = {"params": params["encoder"]["layers_0"]["ffn"]}
ffn_out_j = book_ffn(config, None).apply(ffn_params, x, deterministic=True)  # (B, S, D)

# %% concept="ffn" side="check"
agree("feed-forward", ffn_out_t, ffn_out_j)

# %% [markdown] concept="encoder_layer"
# ## Encoder layer
#
# Self-attention then the FFN, each wrapped post-LN as in the book: `Norm(x + dropout(f(x)))`
# (`norm_placement="pre"` gives `x + dropout(f(Norm(x)))`). One `residual` helper per stack.

# %% concept="encoder_layer" side="torch"
with torch.no_grad():
    enc_out_t = torch_model.encoder.layers[0](torch.as_tensor(x), src_mask_t)  # (B, S, D)

# %% concept="encoder_layer" side="jax"
from jax_impl.families.transformer import EncoderLayer

enc_params = {"params": params["encoder"]["layers_0"]}
enc_out_j = EncoderLayer(config).apply(enc_params, x, src_mask_j, deterministic=True)  # (B, S, D)

# %% concept="encoder_layer" side="check"
agree("encoder layer", enc_out_t, enc_out_j)

# %% [markdown] concept="decoder_layer"
# ## Decoder layer
#
# Causal self-attention over the target, cross-attention to the encoder's output (the "memory",
# masked by source padding), then the FFN; each sub-layer post-LN.

# %% concept="decoder_layer" side="torch"
y = np.random.default_rng(3).standard_normal((2, 5, 16)).astype(np.float32)  # (B, T, D)
with torch.no_grad():
    dec_out_t = torch_model.decoder.layers[0](torch.as_tensor(y), enc_out_t, tgt_mask_t, src_mask_t)  # (B, T, D)

# %% concept="decoder_layer" side="jax"
from jax_impl.families.transformer import DecoderLayer

dec_params = {"params": params["decoder"]["layers_0"]}
dec_out_j = DecoderLayer(config).apply(dec_params, y, enc_out_j, tgt_mask_j, src_mask_j, deterministic=True)

# %% concept="decoder_layer" side="check"
agree("decoder layer", dec_out_t, dec_out_j)

# %% [markdown] concept="model"
# ## The whole model
#
# Embed, encode, decode, project to the vocabulary: `(src (B, S), tgt (B, T)) -> logits (B, T, V)`.
# `torch_model(src, tgt)` vs `jax_model.apply({"params": params}, src, tgt)`.

# %% concept="model" side="torch"
with torch.no_grad():
    logits_t = torch_model(src_t, tgt_t)  # (B, T, V)

# %% concept="model" side="jax"
logits_j = jax.jit(jax_model.apply)({"params": params}, src, tgt)  # (B, T, V); jit: one compiled program

# %% concept="model" side="check"
agree("logits", logits_t, logits_j)

# %% [markdown] concept="train_mode"
# ## Train/eval mode and the dropout RNG
#
# PyTorch: `model.train()` / `model.eval()` flip a flag on every submodule, and dropout draws from
# the global generator (`torch.manual_seed`), so two calls differ and a seed replays them. JAX: no
# mode and no hidden generator. Dropout is on exactly when you pass a key
# (`rngs={"dropout": key}`); the same key gives the same masks, and without one (or with
# `deterministic=True`) the call is the eval forward. **Pitfall:** the two frameworks draw
# different dropout masks from "the same" seed, so train-mode outputs never match across stacks;
# parity is checked with dropout off, and training runs agree in distribution, not bit for bit.

# %% concept="train_mode" side="torch"
ffn_t = torch_model.encoder.layers[0].ffn
ffn_t.train()  # dropout on: a flag on the module (model.train() sets it on every submodule)
with torch.no_grad():
    torch.manual_seed(7)
    drop_a_t = ffn_t(torch.as_tensor(x))
    drop_b_t = ffn_t(torch.as_tensor(x))  # the global generator moved on: other masks
    torch.manual_seed(7)
    drop_c_t = ffn_t(torch.as_tensor(x))  # reseeded: the first call's masks again
ffn_t.eval()
with torch.no_grad():
    eval_t = ffn_t(torch.as_tensor(x))

# %% concept="train_mode" side="jax"
ffn_j = book_ffn(config, None)
key = jax.random.key(7)
drop_a_j = ffn_j.apply(ffn_params, x, deterministic=False, rngs={"dropout": key})
drop_b_j = ffn_j.apply(ffn_params, x, deterministic=False, rngs={"dropout": jax.random.fold_in(key, 1)})
drop_c_j = ffn_j.apply(ffn_params, x, deterministic=False, rngs={"dropout": key})  # same key, same masks
eval_j = ffn_j.apply(ffn_params, x, deterministic=True)  # the whole model: no key means no dropout

# %% concept="train_mode" side="check"
assert not np.allclose(drop_a_t.numpy(), drop_b_t.numpy()) and np.array_equal(drop_a_t.numpy(), drop_c_t.numpy())
assert not np.allclose(drop_a_j, drop_b_j) and np.array_equal(drop_a_j, drop_c_j)
print("each stack: other masks differ, the same seed/key replays exactly")
agree("eval forward (dropout off in both)", eval_t, eval_j)

# %% [markdown]
# ## Summary: where state lives
#
# | state | PyTorch (`torch_impl`) | JAX / Flax (`jax_impl`) |
# |---|---|---|
# | parameters | inside each `nn.Module` (`named_parameters()`) | a pytree passed to `apply(params, ...)` |
# | buffers (sinusoid table) | `register_buffer(..., persistent=False)` | a constant folded into the program |
# | dropout RNG | the global generator, `torch.manual_seed` | a key argument, `rngs={"dropout": key}` |
# | train / eval | `model.train()` / `model.eval()` flag | `deterministic=` argument (or no key) |
# | optimizer state | inside `torch.optim.Adam` (chapter 4) | a pytree returned by `tx.init(params)` |
#
# Pitfalls met in this chapter: Linear weights are (out, in) in torch and (in, out) in Flax; Flax's
# LayerNorm epsilon default differs from torch's; `jax.nn.gelu` defaults to the tanh approximation
# (the config names `gelu` and `gelu_tanh` separately); fully masked attention rows differ between
# libraries; dropout masks never match across frameworks.
