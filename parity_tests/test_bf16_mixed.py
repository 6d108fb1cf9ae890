"""bf16-mixed training (issue 8 item 5): float32 master weights and Adam state, bf16 matmuls.

PyTorch runs its forward under torch.autocast; the Flax modules get the compute dtype explicitly
(`Transformer(config, dtype="bfloat16")`). shared/parity/mixed_precision.py is the one policy both follow,
and the first test holds both stacks to it module by module.

Trajectories are bounded by shared/parity/tolerances.compare_stacks: each stack's own rounding error is
measured by running its same trajectory (same init, same batches, dropout off) in float64, so the
bound follows the magnitudes the run actually reaches; a formula difference between the stacks
would show as a difference of the float64 runs, which agree to ~1e-12.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
import torch

import jax_impl
import torch_impl
from jax_impl.intermediates import forward_with_intermediates
from parity_tests.helpers import torch_initial_tensors
from shared.config.model_config import ModelConfig
from shared.parity.mixed_precision import mixed_output_dtype
from shared.parity.tolerances import Comparison, compare_stacks
from shared.training.train_config import TrainConfig
from shared.training.loop import load_pairs, make_sampler, make_tokenizer
from torch_impl.intermediates import capture_intermediates
from torch_impl.numpy_bridge import to_numpy
from twinformer.parity_report import random_inputs

STEPS = 50
RESUME_AT = 25
PRECISION = "bf16-mixed"  # the bound's row: activations stored in bf16 (shared/parity/tolerances.UNIT_ROUNDOFF)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def within_bound(name: str, torch_low, jax_low, torch_f64, jax_f64) -> Comparison:
    """The one cross-stack comparison of this file: compare_stacks under bf16 storage, asserted."""
    comparison = compare_stacks(torch_low, jax_low, torch_f64, jax_f64, PRECISION)
    assert comparison.ok, (
        f"{name}: max |torch - jax| {comparison.max_abs:.3g} exceeds the bound {comparison.limit:.3g} "
        f"(own rounding error {comparison.own_error:.3g}, scale {comparison.scale:.3g})"
    )
    return comparison


# -- the policy, module by module --------------------------------------------------------------------
def test_module_dtypes_follow_the_policy_and_values_agree(parity_env):
    """Under bf16-mixed every module's output has the policy's dtype in both stacks, and agrees."""
    config = ModelConfig(src_vocab_size=41, tgt_vocab_size=41, d_model=48, num_heads=4, d_ff=96, num_encoder_layers=1,
                         num_decoder_layers=1, max_len=16, norm_placement="pre", final_norms=True, activation="gelu",
                         scale_embeddings=True, tie_embeddings="all")  # fmt: skip
    tensors = torch_initial_tensors(config, seed=3)  # float32 master weights
    src, tgt = random_inputs(config, batch=3, src_len=9, tgt_len=7, seed=3)
    dev = parity_env.torch_device

    def torch_run(dtype):
        model = torch_impl.from_numpy(config, tensors).to(dev).eval()
        if dtype == torch.float64:
            model = model.double()
        with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype is None):
            with capture_intermediates(model) as records:
                model(torch.as_tensor(src, device=dev), torch.as_tensor(tgt, device=dev))
        return {f"{n}[{i}]": to_numpy(o) for n, outs in records.items() if n != "pos_encoding" for i, o in enumerate(outs)}

    def jax_run(compute_dtype, param_dtype):
        params = jax.tree_util.tree_map(lambda a: a.astype(param_dtype),
                                        jax_impl.params_from_state_dict(config, tensors))
        model = jax_impl.Transformer(config, dtype=compute_dtype)
        _, records = jax.jit(forward_with_intermediates, static_argnums=0)(model, params, *parity_env.jax_put((src, tgt)))
        return {f"{n}[{i}]": np.asarray(o) for n, outs in records.items() for i, o in enumerate(outs)}

    torch_mixed, jax_mixed = torch_run(None), jax_run("bfloat16", np.float32)
    with jax.enable_x64():
        torch_f64, jax_f64 = torch_run(torch.float64), jax_run(None, np.float64)
    assert set(torch_mixed) == set(jax_mixed)
    wrong = {n: (str(torch_mixed[n].dtype), str(jax_mixed[n].dtype), mixed_output_dtype(n.split("[")[0]))
             for n in torch_mixed
             if not str(torch_mixed[n].dtype) == str(jax_mixed[n].dtype) == mixed_output_dtype(n.split("[")[0])}
    assert not wrong, f"output dtypes (torch, jax, policy) differ from the policy: {wrong}"
    identical = sum(np.array_equal(torch_mixed[n], jax_mixed[n]) for n in torch_mixed)
    ratios = {n: within_bound(n, torch_mixed[n], jax_mixed[n], torch_f64[n], jax_f64[n]).ratio for n in torch_mixed}
    worst = max(ratios, key=ratios.get)
    print(f"\nbf16-mixed forward: {identical}/{len(torch_mixed)} module outputs bit-identical; "
          f"worst |torch - jax| / bound {ratios[worst]:.3f} at {worst}")


# -- 50-step trajectories ------------------------------------------------------------------------------
def _config(precision: str) -> TrainConfig:
    return TrainConfig(
        model_overrides={"dropout": 0.0, "attention_dropout": 0.0, "embedding_dropout": 0.0, "activation": "gelu",
                         "scale_embeddings": True, "num_encoder_layers": 1, "num_decoder_layers": 1},  # 1+1: compiles fast
        vocab_size=64, batch_size=16, max_len=16, pad_to_multiple=16,  # one batch shape: one compile
        total_steps=STEPS, optimizer="adamw", lr=1e-3, betas=(0.9, 0.98), eps=1e-9, weight_decay=0.01,
        clip_norm=1.0, label_smoothing=0.1, schedule="inverse_sqrt", warmup_steps=10, seed=0,
        device="cpu", precision=precision, log_every=1, bleu_sentences=0, keep_last=None,
    )  # fmt: skip


@pytest.fixture(scope="module")
def runs(parity_env):
    """Per-step losses and final weights of both stacks, bf16-mixed and float64, from one init.

    Also the torch bf16-mixed backend's state at step RESUME_AT (for the resume test).
    """
    if parity_env.device != "cpu":
        pytest.skip("the trajectory runs are sized for the CPU suite")
    from jax_impl.training import JaxBackend
    from torch_impl.training import TorchBackend

    config = _config("bf16-mixed")
    pairs = load_pairs(config, "train")[: 16 * STEPS]
    tokenizer = make_tokenizer(config, pairs)
    batches = [b for _, b in zip(range(STEPS), make_sampler(config, tokenizer, pairs).stream())]
    model_config = config.resolve_model_config(tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    torch.manual_seed(1234)
    init = torch_impl.state_dict_numpy(torch_impl.Transformer(model_config))

    def fresh(tensors):  # TorchBackend trains the arrays it is given in place (shared memory)
        return {k: v.copy() for k, v in tensors.items()}

    def run(backend, at=None):
        losses, state = [], None
        for step, batch in enumerate(batches):
            if step == at:
                # copies: torch's model_tensors() are views of the live parameters (and jax's may be
                # views of buffers the next step donates)
                moments = backend.optimizer_state()
                moments = dataclasses.replace(moments, exp_avg=fresh(moments.exp_avg), exp_avg_sq=fresh(moments.exp_avg_sq))
                state = (fresh(backend.model_tensors()), moments, backend.rng_state())
            losses.append(float(backend.train_step(batch)["loss"]))
        return np.array(losses), backend.model_tensors(), state

    torch_mixed = run(TorchBackend(model_config, config, STEPS, fresh(init)), at=RESUME_AT)
    jax_mixed = run(JaxBackend(model_config, config, STEPS, fresh(init)), at=RESUME_AT)
    reference = _config("float32")
    torch_backend = TorchBackend(model_config, reference, STEPS, fresh(init))
    torch_backend.model.double()  # float64 weights; Adam's state follows the parameters' dtype
    torch_f64 = run(torch_backend)
    wide = {k: v.astype(np.float64) for k, v in init.items()}
    with jax.enable_x64():
        jax_f64 = run(JaxBackend(model_config, reference, STEPS, wide))
    return dict(config=config, tokenizer=tokenizer, batches=batches, model_config=model_config,
                torch_mixed=torch_mixed, jax_mixed=jax_mixed, torch_f64=torch_f64, jax_f64=jax_f64)  # fmt: skip


def test_bf16_mixed_trajectory_50_steps(runs):
    """Per-step losses and the final weights (every tensor) agree within the derived bound."""
    (tm, tw, _), (jm, jw, _), (t64, tw64, _), (j64, jw64, _) = (runs[k] for k in ("torch_mixed", "jax_mixed", "torch_f64", "jax_f64"))
    assert tw[next(iter(tw))].dtype == jw[next(iter(jw))].dtype == np.float32, "master weights stay float32"
    assert tm[-1] < tm[0] - 0.5, "the run must actually train"
    # The float64 runs check the formulas. They agree to ~1e-8, not 1e-14: jax's schedule evaluates
    # the learning rate in float32 (shared/training/schedules.py), a 2^-24 relative difference in every step.
    assert np.abs(t64 - j64).max() < 1e-6, "the float64 runs (the formulas) differ"
    losses = within_bound("per-step loss", tm, jm, t64, j64)
    ratios = {k: within_bound(k, tw[k], jw[k], tw64[k], jw64[k]).ratio for k in tw}
    worst = max(ratios, key=ratios.get)
    print(f"\nbf16-mixed 50 steps: max |torch - jax| loss {losses.max_abs:.2e} (bound {losses.limit:.2e}, own "
          f"error {losses.own_error:.2e}); loss {tm[0]:.3f} -> {tm[-1]:.3f}; weights: worst ratio {ratios[worst]:.3f} at {worst}")


@pytest.mark.parametrize("first, second", [("torch", "jax"), ("jax", "torch")])
def test_bf16_mixed_run_resumes_in_the_other_framework(runs, tmp_path, first, second):
    """first (bf16-mixed) checkpoints at step 25; second resumes from the files; steps 26-50 track."""
    from jax_impl.training import JaxBackend
    from shared.training.run_checkpoint import load_run_checkpoint, save_run_checkpoint
    from torch_impl.training import TorchBackend

    tensors, optimizer, rng = runs[f"{first}_mixed"][2]
    assert all(v.dtype == np.float32 for v in optimizer.exp_avg_sq.values()), "Adam moments are float32"
    save_run_checkpoint(tmp_path, step=RESUME_AT, model_config=runs["model_config"], tensors=tensors, optimizer=optimizer,
                        rng=rng, trainer_state={}, train_config=runs["config"], tokenizer=runs["tokenizer"])  # fmt: skip
    checkpoint = load_run_checkpoint(tmp_path)
    assert checkpoint.train_config == runs["config"] and checkpoint.train_config.precision == "bf16-mixed"
    assert checkpoint.model_config == runs["model_config"]
    backend_class = {"torch": TorchBackend, "jax": JaxBackend}[second]
    # the checkpoint's weights as init: no init compile in jax (restore sets them again)
    backend = backend_class(checkpoint.model_config, checkpoint.train_config, STEPS, checkpoint.tensors)
    backend.restore(checkpoint.tensors, checkpoint.optimizer, checkpoint.rng)
    resumed = np.array([float(backend.train_step(b)["loss"]) for b in runs["batches"][RESUME_AT:]])
    # Against the uninterrupted run of `first`, under the bound of the uninterrupted runs (each
    # stack's own error measured against its own float64 twin over the same steps). The resumed run
    # has no float64 twin of its own: measuring its error against the other stack's float64 run
    # would let a broken resume inflate its own bound.
    after = slice(RESUME_AT, None)
    uninterrupted = compare_stacks(*(runs[k][0][after] for k in ("torch_mixed", "jax_mixed", "torch_f64", "jax_f64")), PRECISION)
    difference = float(np.abs(runs[f"{first}_mixed"][0][after] - resumed).max())
    print(f"\n{first} -> {second} resume (bf16-mixed): max |loss difference| {difference:.2e}, bound {uninterrupted.limit:.2e}")
    assert difference <= uninterrupted.limit, f"the resumed run departs: {difference:.3g} > {uninterrupted.limit:.3g}"


def test_torch_train_step_computes_in_bf16_and_keeps_fp32_masters():
    """Direct check of the precision switch (the trajectory bound's floor would hide a run in fp32).

    Under bf16-mixed every Linear of a torch train step outputs bfloat16, while the weights and
    their gradients stay float32 (shared/parity/mixed_precision.py's policy).
    """
    from shared.data.batching import Batch
    from torch_impl.training import TorchBackend

    config = _config("bf16-mixed")
    model_config = ModelConfig(src_vocab_size=16, tgt_vocab_size=16, d_model=8, num_heads=2, d_ff=16, num_encoder_layers=1,
                               num_decoder_layers=1, max_len=8, dropout=0.0, attention_dropout=0.0, embedding_dropout=0.0)
    backend = TorchBackend(model_config, config, 1, None)
    seen = {}
    for name, module in backend.model.named_modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda m, args, out, name=name: seen.__setitem__(name, out.dtype))
    rng = np.random.default_rng(0)
    src, tgt = (rng.integers(3, 16, size=(2, 5)).astype(np.int32) for _ in range(2))
    backend.train_step(Batch(src=src, tgt_in=tgt, tgt_out=tgt, indices=np.arange(2), num_tokens=int(tgt.size)))
    assert seen and set(seen.values()) == {torch.bfloat16}, {n: str(d) for n, d in seen.items() if d != torch.bfloat16}
    assert {p.dtype for p in backend.model.parameters()} == {torch.float32}
    assert {p.grad.dtype for p in backend.model.parameters() if p.grad is not None} == {torch.float32}
