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
# # Chapter 4: pre-training, object-oriented and functional
#
# The book's chapter 4 pre-trains its Transformer on translation. Here the same training step is
# written in both styles: PyTorch's `nn.Module` + `optimizer.step()` (objects that change in
# place) and JAX's pure jitted function `step(params, opt_state, batch, rng) -> (params, opt_state,
# metrics)` (nothing changes; new values come back). Then the learning-rate schedule, checkpoints
# that move a run from one framework to the other, and greedy and beam-search decoding.
#
# Dropout is off here (`dropout=0`): the two frameworks draw different dropout masks (chapter 3),
# and with it off the two runs must follow the same trajectory step for step.

# %%
import jax
import jax.numpy as jnp
import numpy as np
import torch

import jax_impl
import torch_impl
from _check import agree, same
from shared.config.model_config import ModelConfig
from shared.data.batching import make_batch
from shared.data.special_tokens import BOS_ID, EOS_ID
from shared.checkpoints.init import initial_tensors
from shared.training.train_config import TrainConfig
from twinformer.devices import pin_precision

pin_precision("float32")
torch.set_num_threads(1)  # tiny tensors: one thread is fastest, and CI machines are small

config = ModelConfig(
    src_vocab_size=12, tgt_vocab_size=12, d_model=16, num_heads=2, d_ff=32,
    num_encoder_layers=1, num_decoder_layers=1, max_len=12,
    dropout=0.0, attention_dropout=0.0, embedding_dropout=0.0, bias=False,
)
total_steps = 10  # the schedule's length: 6 steps here, then 3 more after moving the run to JAX
first_steps = 6
train_config = TrainConfig(
    optimizer="adam", lr=3e-3, betas=(0.9, 0.98), eps=1e-9, schedule="cosine", warmup_steps=2,
    total_steps=total_steps, clip_norm=1.0, label_smoothing=0.1, device="cpu",
)
tensors = initial_tensors(config, seed=0)  # one numpy init (shared/checkpoints/init.py) for both stacks

# Three batches of random "sentences" (ids 4..11), padded by the project's batching code to one
# shape (8 positions): each new shape would cost the jitted JAX step a fresh compile.
rng = np.random.default_rng(0)
def random_pair(n_src, n_tgt):
    return list(rng.integers(4, 12, n_src)) + [EOS_ID], [BOS_ID] + list(rng.integers(4, 12, n_tgt)) + [EOS_ID]
batches = [make_batch([random_pair(int(rng.integers(2, 7)), int(rng.integers(2, 6))) for _ in range(4)], pad_to_multiple=8)
           for _ in range(3)]
print("batch 0: src", batches[0].src.shape, "tgt_in", batches[0].tgt_in.shape)

# %% [markdown] concept="train_step"
# ## One training step
#
# **PyTorch**: the model object holds the weights, `loss.backward()` writes each gradient into
# `param.grad`, the optimizer object holds Adam's moments and `optimizer.step()` overwrites the
# weights in place. **JAX**: `make_train_step` returns a pure function compiled with `jax.jit`;
# gradients are a return value of `jax.value_and_grad`, the optax state is a pytree, and the new
# weights come back as new arrays. Both use the same loss (label-smoothed cross-entropy over
# non-pad targets), the same clipping rule and the same schedule.
#
# **Pitfalls**: `torch.optim.Adam(weight_decay=...)` is L2, not AdamW's decoupled decay;
# `clip_grad_norm_` divides by `norm + 1e-6` while optax's rule does not (the project writes one rule
# for both); `torch_impl.from_numpy` shares memory with a writable numpy array, so an in-place
# update writes through to it (copy first, as below); the jitted step *donates* its `params` and `opt_state` arguments (XLA reuses their
# memory), so always continue from the returned values, never the ones you passed in.

# %% concept="train_step" side="torch"
import torch.nn.functional as F

from shared.training.schedules import schedule_for
from torch_impl.training import build_optimizer, clip_by_global_norm_, global_norm, masked_cross_entropy

# from_numpy shares memory with writable numpy arrays, and optimizer.step() writes in place:
# give torch its own copy, or the shared `tensors` change under the JAX run's feet.
model_t = torch_impl.from_numpy(config, {k: v.copy() for k, v in tensors.items()}).train()
optimizer = build_optimizer(model_t, train_config)  # Adam: its moments live inside this object
schedule = schedule_for(train_config, total_steps)  # step -> lr, a plain function (numpy)

def torch_train_step(step, batch):
    src, tgt_in, tgt_out = (torch.as_tensor(a, dtype=torch.long) for a in (batch.src, batch.tgt_in, batch.tgt_out))
    logits = model_t(src, tgt_in)  # (B, T, V)
    loss = masked_cross_entropy(logits, tgt_out, config.pad_id, train_config.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()  # writes p.grad for every parameter
    grads = [p.grad for p in model_t.parameters()]
    clip_by_global_norm_(grads, train_config.clip_norm, global_norm(grads))  # in place
    for group in optimizer.param_groups:
        group["lr"] = float(schedule(step))  # the optimizer reads its lr from mutable state
    optimizer.step()  # updates every parameter in place
    return loss.item(), optimizer.param_groups[0]["lr"]

losses_t, lrs_t = zip(*[torch_train_step(step, batches[step % 3]) for step in range(first_steps)])
print("torch losses:", np.round(losses_t, 5))

# %% concept="train_step" side="jax"
from jax_impl.training import batch_arrays, make_train_step

tx, train_step = make_train_step(config, train_config, total_steps)  # optax chain, jitted pure step
cpu = jax.devices("cpu")[0]  # arrays placed ("committed") on a device explicitly, as the trainer does
params = jax.device_put(jax_impl.params_from_state_dict(config, tensors), cpu)
opt_state = jax.device_put(tx.init(params), cpu)  # Adam's moments and update count: a pytree, not an object
key = jax.random.split(jax.random.PRNGKey(train_config.seed))[1]  # dropout RNG: an argument too (0 here)

losses_j = []
for step in range(first_steps):
    params, opt_state, metrics = train_step(params, opt_state, batch_arrays(batches[step % 3]),
                                            jax.random.fold_in(key, step))  # new params, new state
    losses_j.append(float(metrics["loss"]))
print("jax losses:  ", np.round(losses_j, 5))

# %% concept="train_step" side="check"
agree("per-step loss", np.array(losses_t), np.array(losses_j))
# The torch loop above is the one the project's trainer runs: TorchBackend gives the same losses, bit for bit.
from torch_impl.training import TorchBackend

backend = TorchBackend(config, train_config, total_steps, init_tensors={k: v.copy() for k, v in tensors.items()})
backend_losses = [float(backend.train_step(batches[step % 3])["loss"]) for step in range(first_steps)]
same("notebook loop vs torch_impl.training.TorchBackend", np.array(losses_t), np.array(backend_losses))

# %% [markdown] concept="optimizer_state"
# ## Where the optimizer state lives
#
# torch keeps Adam's first and second moments in `optimizer.state[param]`, a dict keyed by the
# parameter *objects*; optax keeps them in `opt_state`, a pytree with the same structure as
# `params` (`mu`, `nu`) plus an update `count`. The checkpoint format stores both by state-dict
# key (`shared/checkpoints/optimizer_state.py`), so a run can move between the stacks.

# %% concept="optimizer_state" side="torch"
q_weight = model_t.encoder.layers[0].self_attn.q_proj.weight
state = optimizer.state[q_weight]  # {"step", "exp_avg", "exp_avg_sq"} for this one tensor
print("torch Adam state keys:", sorted(state), "step:", int(state["step"]))
exp_avg_t = {name: optimizer.state[p]["exp_avg"] for name, p in model_t.named_parameters()}

# %% concept="optimizer_state" side="jax"
import optax

adam = next(s for s in opt_state if isinstance(s, optax.ScaleByAdamState))  # the chain's Adam part
mu, count = adam.mu, adam.count  # mu: a params-shaped pytree; the schedule keeps its own count too
print("optax count:", int(count), " mu leaf:", mu["encoder"]["layers_0"]["self_attn"]["q_proj"]["kernel"].shape)
exp_avg_j = jax_impl.state_dict_from_params(config, mu)  # the same keys and layouts as torch

# %% concept="optimizer_state" side="check"
assert int(state["step"]) == int(count) == first_steps
assert sorted(exp_avg_t) == sorted(exp_avg_j)
agree("Adam first moments, every tensor", np.concatenate([exp_avg_t[k].numpy().ravel() for k in sorted(exp_avg_t)]),
      np.concatenate([exp_avg_j[k].ravel() for k in sorted(exp_avg_j)]))

# %% [markdown] concept="schedule"
# ## The learning-rate schedule
#
# One formula, `shared.training.schedules.learning_rate`, written for any array module: torch evaluates it
# with numpy and writes the value into each param group before `optimizer.step()` (as above);
# optax calls the same formula, with `xp=jax.numpy`, on the update count it keeps in `opt_state`
# (`optax.scale_by_learning_rate`), inside the compiled step. Here: linear warmup for 2 updates,
# then cosine to 0.

# %% concept="schedule" side="torch"
print("lr applied at each torch step:", np.round(lrs_t, 6))

# %% concept="schedule" side="jax"
jax_schedule = jax.jit(schedule_for(train_config, total_steps, xp=jnp))  # traceable: a pure function
lrs_j = jax_schedule(jnp.arange(first_steps))  # what optax applies at counts 0..5

# %% concept="schedule" side="check"
agree("learning rate per step", np.array(lrs_t), lrs_j)
assert lrs_t[1] == max(lrs_t) == train_config.lr  # warmup peaks at step W - 1, then decays

# %% [markdown] concept="checkpoint"
# ## Checkpoints: one format, a run that changes framework
#
# A checkpoint directory holds `config.json` and `model.safetensors` in PyTorch's state-dict
# layout; Flax params are converted on load and save (a transpose for Linear kernels). A
# training checkpoint adds the Adam moments by the same keys, the step and the RNG state, so a run
# started in PyTorch continues in JAX: below, the PyTorch trainer's state after 6 steps is
# restored into a JAX trainer, and both go on for 3 more steps.
#
# **Never** `pickle`/`torch.load` an untrusted file: safetensors holds only arrays.

# %% concept="checkpoint" side="torch"
import tempfile
from pathlib import Path

workdir = Path(tempfile.mkdtemp())
torch_impl.save(backend.model, workdir / "from_torch")  # writes config.json + model.safetensors
print(sorted(p.name for p in (workdir / "from_torch").iterdir()))
moments = backend.optimizer_state()  # Adam moments by state-dict key: the neutral format
more_t = [float(backend.train_step(batches[step % 3])["loss"]) for step in range(6, 9)]

# %% concept="checkpoint" side="jax"
from jax_impl.training import JaxBackend

_, loaded_params = jax_impl.load(workdir / "from_torch")  # (module, params pytree)
jax_impl.save(config, loaded_params, workdir / "from_jax")  # and back to the same format
resumed = JaxBackend(config, train_config, total_steps, init_tensors=tensors)
resumed.restore(jax_impl.state_dict_from_params(config, loaded_params), moments, rng=None)
more_j = [float(resumed.train_step(batches[step % 3])["loss"]) for step in range(6, 9)]

# %% concept="checkpoint" side="check"
same("torch -> file -> jax -> file, the weights file", (workdir / "from_torch" / "model.safetensors").read_bytes(),
     (workdir / "from_jax" / "model.safetensors").read_bytes())
assert min(schedule(np.arange(6, 9))) > 0  # the moments carried over do move the weights
agree("steps 7-9 after moving the run to JAX", np.array(more_t), np.array(more_j))

# %% [markdown] concept="decoding"
# ## Greedy and beam-search decoding
#
# The same algorithm (`shared/decoding/generation.py`, beam rules in `shared/decoding/search.py`) in two shapes. PyTorch: a plain Python loop that
# appends a token per step and stops when every row has emitted EOS. JAX: one compiled
# `lax.while_loop` over a fixed-size token buffer (jit needs static shapes), with params passed in
# as an argument. Beam search keeps K hypotheses per row; its ties are broken by the same rule in
# both stacks, so the tokens are identical, not just close.

# %% concept="decoding" side="torch"
from shared.decoding.generation import GenerationConfig
from torch_impl.generate import generate as torch_generate  # one loop for every family

decode_model = backend.model  # the PyTorch run's weights after 9 steps
sources = batches[0].src  # (B, S)
greedy_t = torch_generate(decode_model, sources, None, GenerationConfig(max_new_tokens=8))  # (B, T_out)
beam_t = torch_generate(decode_model, sources, None, GenerationConfig(max_new_tokens=8, num_beams=3))
print(greedy_t)

# %% concept="decoding" side="jax"
from jax_impl.generate import generate as jax_generate
from shared.decoding.generation import GenerationConfig  # one config for every family (HF's names)

decode_params = jax_impl.params_from_state_dict(config, torch_impl.state_dict_numpy(decode_model))
greedy_j = jax_generate(jax_impl.Transformer(config), decode_params, sources, config=GenerationConfig(max_new_tokens=8))
beam_j = jax_generate(jax_impl.Transformer(config), decode_params, sources,
                      config=GenerationConfig(max_new_tokens=8, num_beams=3))

# %% concept="decoding" side="check"
same("greedy tokens", greedy_t, greedy_j)
same("beam-search tokens (K = 3)", beam_t, beam_j)

# %% [markdown]
# ## Summary: a training run's state
#
# | state | PyTorch | JAX / optax |
# |---|---|---|
# | weights | `model.parameters()`, updated in place by `optimizer.step()` | `params`, returned anew by the jitted step |
# | gradients | `param.grad`, written by `loss.backward()` | return value of `jax.value_and_grad` |
# | Adam moments | `optimizer.state[param]` | `opt_state` (`mu`, `nu`, `count`) |
# | learning rate | `param_group["lr"]`, set each step | a schedule function of `count`, inside the step |
# | dropout RNG | global generator (`torch.manual_seed`), saved as bytes | a key, `fold_in(key, step)` per step |
# | on disk | `model.safetensors` (state-dict layout) + optimizer moments by key | the same files, converted on load/save |
