"""LoRA parity: torch_impl (PEFT) and jax_impl compute the same adapted model, gradients and training.

Drawn tiny models and target sets; adapters get random (non-zero) A and B, since a fresh adapter
(B = 0) would make every forward comparison trivially pass.
"""

from __future__ import annotations

import copy
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jax_impl
import torch_impl
from jax_impl import lora as jax_lora
from shared.config.model_config import ModelConfig
from shared.checkpoints.lora_config import LoRAConfig, LoRAConfigError, format_parameter_report, resolve_targets
from parity_tests import strategies as pst
from parity_tests.helpers import assert_all_close
from parity_tests.lora_dropout import MaskBank, share_with_torch, shared_with_jax
from shared.parity.tolerances import FLOAT64_AGREEMENT
from shared.checkpoints.weight_table import torch_module_to_flax_path
from torch_impl import lora as torch_lora

jax.config.update("jax_default_matmul_precision", "highest")
PRECISION = "float32"  # these tests run on the CPU in float32 (plus their float64 reference runs)
LINEAR_NAMES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
REGEXES = (r"decoder\..*\.(q_proj|v_proj)", r".*cross_attn\.(k_proj|out_proj)", r"encoder\.layers\.0\.ffn\.fc\d")
FEW = settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclasses.dataclass
class Case:
    config: ModelConfig
    lora: LoRAConfig
    seed: int


@st.composite
def cases(draw) -> Case:
    # Widths fixed: each new shape costs jax an op compilation; the structure is what varies.
    d_model = 8
    tie = draw(st.sampled_from(["none", "tgt_out", "all"]))
    bias = draw(st.booleans())
    config = ModelConfig(
        src_vocab_size=9,
        tgt_vocab_size=9,
        d_model=d_model,
        num_heads=draw(st.sampled_from([1, 2])),
        d_ff=8,
        num_encoder_layers=1,
        num_decoder_layers=draw(st.integers(1, 2)),
        max_len=8,
        dropout=0.0,  # the model's own dropout off: train mode differs from eval by the LoRA dropout alone
        attention_dropout=0.0,
        embedding_dropout=0.0,
        bias=bias,
        norm_placement=draw(st.sampled_from(["post", "pre"])),
        activation=draw(st.sampled_from(["relu", "gelu"])),
        tie_embeddings=tie,
        final_norms=draw(st.booleans()),
    )
    saveable = ["tgt_embed"] if tie != "all" else ["shared_embed"]
    if tie == "none" or bias:
        saveable.append("output_proj")
    to_save = tuple(draw(st.lists(st.sampled_from(saveable), unique=True, max_size=2)))
    if draw(st.booleans()):
        targets = draw(st.sampled_from(REGEXES))
    else:
        names = list(LINEAR_NAMES) + (["output_proj"] if tie == "none" and "output_proj" not in to_save else [])
        targets = tuple(draw(st.lists(st.sampled_from(names), min_size=1, max_size=4, unique=True)))
    lora = LoRAConfig(
        r=draw(st.integers(1, 4)),
        alpha=draw(st.sampled_from([1, 4, 16])),
        dropout=draw(pst.LORA_DROPOUT_RATES),
        target_modules=targets,
        use_rslora=draw(st.booleans()),
        modules_to_save=to_save,
    )
    return Case(config, lora, draw(st.integers(0, 2**16)))


def batch(config: ModelConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(src (B, S), tgt (B, T)) int32 with some padding (pad id 0) but a real first token."""
    rng = np.random.default_rng(seed)
    src = rng.integers(1, config.src_vocab_size, size=(2, 5)).astype(np.int32)
    tgt = rng.integers(1, config.tgt_vocab_size, size=(2, 4)).astype(np.int32)
    src[1, 3:] = 0
    tgt[1, 3:] = 0
    return src, tgt


def build_pair(case: Case):
    """Same base weights and random adapter values in both stacks: (peft_model, params, adapters, tensors)."""
    torch.manual_seed(case.seed)
    model = torch_impl.Transformer(case.config).eval()
    base = torch_impl.state_dict_numpy(model)
    peft_model = torch_lora.apply_lora(model, case.lora).eval()
    rng = np.random.default_rng(case.seed)
    tensors = {k: random_adapter_value(k, v.shape, case.lora, rng) for k, v in torch_lora.adapter_tensors(peft_model).items()}
    torch_lora.set_adapter_tensors(peft_model, tensors)
    params = jax_impl.params_from_state_dict(case.config, base)
    adapters = jax_lora.adapters_from_tensors(case.config, case.lora, tensors)
    return peft_model, params, adapters, tensors


def random_adapter_value(key: str, shape, lora: LoRAConfig, rng) -> np.ndarray:
    """A trained-looking adapter: A at its init scale, scaling * B @ A of the order of W (1/sqrt(in)).

    Not larger: with scaling * B 16x the base weights, attention saturates and float32 gradients of
    torch's kernels drift ~4e-5 relative from the float64 value (jax's stay at ~3e-6), a conditioning
    effect, not a formula difference (measured on a drawn case, r=1, alpha=16).
    """
    if key.endswith("lora_A.weight"):  # (r, in)
        return rng.uniform(-1, 1, shape).astype(np.float32) / np.float32(np.sqrt(shape[1]))
    if key.endswith("lora_B.weight"):  # (out, r)
        return (rng.standard_normal(shape) / lora.scaling).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)  # a saved module's trained copy


def torch_adapter_grads(peft_model, loss) -> dict[str, np.ndarray]:
    """Gradients of the trainable parameters under their PEFT file keys (adapter name dropped)."""
    named = [(n, p) for n, p in peft_model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in named])
    return {n.replace(".modules_to_save.default", "").replace(".default", ""): g.numpy() for (n, _), g in zip(named, grads)}


def _to64(tree):
    """A pytree of arrays as float64 (call inside jax.enable_x64())."""
    return jax.tree_util.tree_map(lambda x: jnp.asarray(np.asarray(x, np.float64)), tree)


def torch_adapted(peft_model, src, tgt, weights):
    """(logits, adapter gradients of sum(logits * weights)) of a PEFT model, in its dtype."""
    logits = peft_model(torch.from_numpy(src), torch.from_numpy(tgt))
    grads = torch_adapter_grads(peft_model, (logits * torch.from_numpy(weights).to(logits.dtype)).sum())
    return logits.detach().numpy(), grads


def jax_adapted(case: Case, params, adapters, src, tgt, weights, **apply_kwargs):
    """The same as torch_adapted through jax_lora.lora_apply and jax.grad, in the dtype of the params
    (apply_kwargs: rngs, deterministic)."""
    model = jax_impl.Transformer(case.config)

    def loss(a):
        logits = jax_lora.lora_apply(model, params, a, case.lora, src, tgt, **apply_kwargs)
        return jnp.sum(logits * weights.astype(logits.dtype)), logits

    (_, logits), grads = jax.value_and_grad(loss, has_aux=True)(adapters)
    return np.asarray(logits), jax_lora.tensors_from_adapters(case.config, case.lora, grads)


@FEW
@given(case=cases())
def test_forward_and_adapter_gradients_agree(case: Case) -> None:
    check_adapted_forward_and_gradients(case)


def _compare(what: str, case: Case, peft_model, params, adapters, **apply_kwargs) -> np.ndarray:
    """Logits and adapter gradients of both stacks (float32 + float64 runs) under the bound; torch's logits."""
    src, tgt = batch(case.config, case.seed)
    weights = np.random.default_rng(case.seed + 1).standard_normal((2, 4, case.config.tgt_vocab_size)).astype(np.float32)
    logits_t, grads_t = torch_adapted(peft_model, src, tgt, weights)
    logits_j, grads_j = jax_adapted(case, params, adapters, src, tgt, weights, **apply_kwargs)
    logits_t64, grads_t64 = torch_adapted(copy.deepcopy(peft_model).double(), src, tgt, weights)
    with jax.enable_x64():
        logits_j64, grads_j64 = jax_adapted(case, _to64(params), _to64(adapters), src, tgt, weights, **apply_kwargs)
    assert_all_close(f"lora{what}: logits", {"logits": (logits_t, logits_j, logits_t64, logits_j64)}, PRECISION, str(case))
    assert set(grads_t) == set(grads_j)
    quads = {k: (grads_t[k], grads_j[k], grads_t64[k], grads_j64[k]) for k in grads_t}
    assert_all_close(f"lora{what}: adapter gradients", quads, PRECISION, str(case))
    # The bound above takes each stack's own error from its float64 twin run; a stack whose two runs
    # drew different dropout masks would inflate that to the size of the bug. The float64 runs of the
    # two stacks must compute one function: that a random difference cannot pass.
    for name, (_, _, a64, b64) in {"logits": (None, None, logits_t64, logits_j64), **quads}.items():
        scale = float(np.abs(a64).max())
        assert np.abs(a64 - b64).max() <= FLOAT64_AGREEMENT * scale, f"lora{what}: float64 {name} differ (a formula difference)"
    return logits_t


def check_adapted_forward_and_gradients(case: Case) -> None:
    """Eval mode (torch eval(); jax deterministic=True although a dropout rng is passed, as an eval step
    inside a training loop would), then train mode with one LoRA dropout mask fed to both stacks
    (parity_tests/lora_dropout.py): logits and adapter gradients agree in both, and differ between them."""
    peft_model, params, adapters, _ = build_pair(case)
    rngs = {"dropout": jax.random.key(case.seed)}
    eval_logits = _compare("", case, peft_model.eval(), params, adapters, rngs=rngs, deterministic=True)
    assert case.lora.dropout > 0
    bank = MaskBank(case.seed)
    assert share_with_torch(peft_model, bank) == len(resolve_targets(case.config, case.lora))
    with shared_with_jax(bank):
        train_logits = _compare(" (train mode, LoRA dropout)", case, peft_model.train(), params, adapters, rngs=rngs)
    assert not np.array_equal(train_logits, eval_logits), "LoRA dropout changed nothing in train mode"


def _merged_and_unmerged_jax(case: Case, params, adapters, src, tgt):
    """(adapter forward, merged forward, merged params) in JAX, in the dtype of the params."""
    model = jax_impl.Transformer(case.config)
    merged_params = jax_lora.merge(params, adapters, case.lora)
    unmerged = np.asarray(jax_lora.lora_apply(model, params, adapters, case.lora, src, tgt))
    return unmerged, np.asarray(model.apply({"params": merged_params}, src, tgt)), merged_params


def _merged_and_unmerged_torch(peft_model, src, tgt):
    """(adapter forward, merged forward) of a PEFT model; the model is left unmerged."""
    unmerged = peft_model(torch.from_numpy(src), torch.from_numpy(tgt)).detach().numpy()
    torch_lora.merge(peft_model)
    merged = peft_model(torch.from_numpy(src), torch.from_numpy(tgt)).detach().numpy()
    torch_lora.unmerge(peft_model)
    return unmerged, merged


@FEW
@given(case=cases())
def test_merge_matches_unmerged_and_unmerge_restores(case: Case) -> None:
    """Merged == adapter forward (bound); unmerge gives W back up to one rounding of W + delta.

    Not bit-exact: fl(fl(W + d) - d) loses the low bits of W that fl(W + d) rounded away, so the
    bound is eps * (|W| + |d|) per element (two roundings of half an ulp each).
    """
    peft_model, params, adapters, tensors = build_pair(case)
    src, tgt = batch(case.config, case.seed)
    eps = np.finfo(np.float32).eps

    # jax
    unmerged_j, merged_j, merged_params = _merged_and_unmerged_jax(case, params, adapters, src, tgt)
    with jax.enable_x64():
        unmerged_j64, merged_j64, _ = _merged_and_unmerged_jax(case, _to64(params), _to64(adapters), src, tgt)
    assert_all_close("lora: merged vs adapter forward", {"jax": (unmerged_j, merged_j, unmerged_j64, merged_j64)}, PRECISION, str(case))
    restored = jax_lora.unmerge(merged_params, adapters, case.lora)
    for target in resolve_targets(case.config, case.lora):
        path = torch_module_to_flax_path(target.module)
        w, w2, m = (np.asarray(_get(tree, path)["kernel"]) for tree in (params, restored, merged_params))
        assert np.all(np.abs(w2 - w) <= eps * (np.abs(w) + np.abs(m - w)))

    # torch (PEFT's merge_adapter / unmerge_adapter)
    base_weights = {n: p.detach().clone() for n, p in peft_model.named_parameters() if n.endswith("base_layer.weight")}
    peft64 = copy.deepcopy(peft_model).double()
    unmerged_t64, merged_t64 = _merged_and_unmerged_torch(peft64, src, tgt)
    unmerged_t = peft_model(torch.from_numpy(src), torch.from_numpy(tgt)).detach().numpy()
    torch_lora.merge(peft_model)
    merged_t = peft_model(torch.from_numpy(src), torch.from_numpy(tgt)).detach().numpy()
    merged_weights = {n: p.detach().clone() for n, p in peft_model.named_parameters() if n in base_weights}
    torch_lora.unmerge(peft_model)
    assert_all_close("lora: merged vs adapter forward", {"torch": (unmerged_t, merged_t, unmerged_t64, merged_t64)}, PRECISION, str(case))
    assert_all_close("lora: adapter forward", {"torch vs jax": (unmerged_t, unmerged_j, unmerged_t64, unmerged_j64)}, PRECISION, str(case))
    for name, w in base_weights.items():
        w2, m = dict(peft_model.named_parameters())[name].detach(), merged_weights[name]
        assert torch.all((w2 - w).abs() <= eps * (w.abs() + (m - w).abs()))


def _get(tree: dict, path: tuple[str, ...]) -> dict:
    for part in path:
        tree = tree[part]
    return tree


def test_fresh_adapter_changes_nothing_and_unmerges_bit_exactly() -> None:
    """B = 0: the adapted model is the base model, and merge/unmerge are exact (W + 0 - 0 = W).

    B = 0 makes any LoRA formula look right, so the second half gives B a value and checks the
    adapted forward of each stack against its base model with W + (alpha / r) * B @ A written into
    the weights in numpy (float64, independent of either stack's LoRA code): a scaling by alpha
    (or by alpha / sqrt(r) without use_rslora), a transposed product or a missing branch fails it.
    """
    config = ModelConfig(src_vocab_size=9, tgt_vocab_size=9, d_model=8, num_heads=2, d_ff=8,
                         num_encoder_layers=1, num_decoder_layers=1, max_len=8)
    lora = LoRAConfig(r=4, alpha=8, target_modules=("q_proj", "v_proj", "fc2"))
    params = jax_impl.init_params(config, jax.random.key(0))
    adapters = jax_lora.init_adapters(config, lora, params, jax.random.key(1))
    src, tgt = batch(config, 0)
    model = jax_impl.Transformer(config)
    np.testing.assert_array_equal(
        np.asarray(jax_lora.lora_apply(model, params, adapters, lora, src, tgt)), np.asarray(model.apply({"params": params}, src, tgt))
    )
    restored = jax_lora.unmerge(jax_lora.merge(params, adapters, lora), adapters, lora)
    jax.tree_util.tree_map(np.testing.assert_array_equal, restored, params)

    # A: U(-1/sqrt(in), 1/sqrt(in)), PEFT/nn.Linear's kaiming_uniform(a=sqrt(5)); same bound in torch.
    a = np.asarray(adapters["lora"]["encoder"]["layers_0"]["ffn"]["fc2"]["lora_A"]["kernel"])  # (F, r)
    assert a.shape == (8, 4) and np.abs(a).max() <= 1 / np.sqrt(8) and np.abs(a).max() > 0.5 / np.sqrt(8)
    torch.manual_seed(0)
    peft_model = torch_lora.apply_lora(torch_impl.Transformer(config), lora)
    a_t = torch_lora.adapter_tensors(peft_model)["base_model.model.encoder.layers.0.ffn.fc2.lora_A.weight"]
    assert a_t.shape == (4, 8) and np.abs(a_t).max() <= 1 / np.sqrt(8)
    assert not np.any(torch_lora.adapter_tensors(peft_model)["base_model.model.encoder.layers.0.ffn.fc2.lora_B.weight"])

    # A trained adapter (B != 0) against W + (alpha / r) B A written by hand, in float64.
    rng = np.random.default_rng(3)
    torch.manual_seed(0)
    base = {k: v.astype(np.float64) for k, v in torch_impl.state_dict_numpy(torch_impl.Transformer(config)).items()}
    peft_model = torch_lora.apply_lora(torch_impl.from_numpy(config, dict(base)), lora).eval()
    trained = {k: rng.standard_normal(v.shape) for k, v in torch_lora.adapter_tensors(peft_model).items()}
    torch_lora.set_adapter_tensors(peft_model, trained)
    merged_by_hand = dict(base)
    for key in trained:
        if key.endswith("lora_A.weight"):
            module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
            b_key = key.replace("lora_A", "lora_B")
            merged_by_hand[f"{module}.weight"] = base[f"{module}.weight"] + (lora.alpha / lora.r) * trained[b_key] @ trained[key]
    expected = torch_impl.from_numpy(config, merged_by_hand).eval()(torch.from_numpy(src), torch.from_numpy(tgt)).detach().numpy()
    adapted_t = peft_model(torch.from_numpy(src), torch.from_numpy(tgt)).detach().numpy()
    with jax.enable_x64():
        params64 = jax_impl.params_from_state_dict(config, base)
        adapted_j = np.asarray(jax_lora.lora_apply(
            model, params64, jax_lora.adapters_from_tensors(config, lora, trained), lora, src, tgt
        ))
    assert np.abs(expected).max() > 1.0  # the adapter matters
    np.testing.assert_allclose(adapted_t, expected, rtol=1e-10, atol=1e-10 * np.abs(expected).max())
    np.testing.assert_allclose(adapted_j, expected, rtol=1e-10, atol=1e-10 * np.abs(expected).max())


def test_lora_dropout_is_off_in_eval_mode() -> None:
    """With lora dropout 0.5, an eval-mode PEFT forward repeats exactly and equals jax's deterministic apply."""
    config = ModelConfig(src_vocab_size=9, tgt_vocab_size=9, d_model=8, num_heads=2, d_ff=8,
                         num_encoder_layers=1, num_decoder_layers=1, max_len=8)
    lora = LoRAConfig(r=4, alpha=8, dropout=0.5, target_modules=("q_proj", "v_proj", "fc1"))
    case = Case(config, lora, seed=5)
    peft_model, params, adapters, _ = build_pair(case)
    src, tgt = batch(config, 0)
    runs = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        with torch.no_grad():
            runs.append(peft_model.eval()(torch.from_numpy(src), torch.from_numpy(tgt)).numpy())
    assert np.array_equal(*runs), "eval-mode LoRA forward is not deterministic: lora dropout left on?"
    model = jax_impl.Transformer(config)
    with torch.no_grad():
        torch64 = copy.deepcopy(peft_model).double().eval()(torch.from_numpy(src), torch.from_numpy(tgt)).numpy()
    with jax.enable_x64():
        jax64 = np.asarray(jax_lora.lora_apply(model, _to64(params), _to64(adapters), lora, src, tgt))
    quad = (runs[0], np.asarray(jax_lora.lora_apply(model, params, adapters, lora, src, tgt)), torch64, jax64)
    assert_all_close("lora: eval forward with lora dropout", {"logits": quad}, PRECISION, str(lora))
    # jax: deterministic=True turns the LoRA dropout off even when a dropout rng is passed
    rngs = {"dropout": jax.random.key(7)}
    kept = np.asarray(jax_lora.lora_apply(model, params, adapters, lora, src, tgt, rngs=rngs, deterministic=True))
    assert np.array_equal(kept, quad[1]), "jax lora dropout is on under deterministic=True: not deterministic"
    dropped = np.asarray(jax_lora.lora_apply(model, params, adapters, lora, src, tgt, rngs=rngs))
    assert not np.array_equal(dropped, quad[1])  # and the rng alone does switch it on: the check has teeth


def test_base_frozen_and_parameter_report_matches_peft(capsys) -> None:
    config = ModelConfig(src_vocab_size=9, tgt_vocab_size=11, d_model=8, num_heads=2, d_ff=8,
                         num_encoder_layers=1, num_decoder_layers=1, max_len=8)
    lora = LoRAConfig(r=2, alpha=4, target_modules=("q_proj", "v_proj"), modules_to_save=("output_proj",))
    peft_model = torch_lora.apply_lora(torch_impl.Transformer(config), lora)
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n or ".modules_to_save." in n for n in trainable)
    peft_model.print_trainable_parameters()
    printed = capsys.readouterr().out.strip()
    assert torch_lora.parameter_report(peft_model) == printed
    params = jax_impl.init_params(config, jax.random.key(0))
    adapters = jax_lora.init_adapters(config, lora, params, jax.random.key(1))
    assert jax_lora.parameter_report(params, adapters) == printed
    # 1 + 2 layers x 2 projections x (A 2x8 + B 8x2) + output_proj copy (11x8 + 11)
    assert jax_lora.parameter_counts(params, adapters)[0] == 6 * 32 + 99
    assert format_parameter_report(1, 3) == "trainable params: 1 || all params: 3 || trainable%: 33.3333"


def _fifty_adam_steps(dtype: str, steps: int = 50, lr: float = 1e-3):
    """(torch losses, jax losses, torch final adapter, jax final adapter) of plain Adam on LoRA, in `dtype`."""
    config = ModelConfig(src_vocab_size=12, tgt_vocab_size=12, d_model=8, num_heads=2, d_ff=16,
                         num_encoder_layers=1, num_decoder_layers=1, max_len=8,
                         dropout=0.0, attention_dropout=0.0, embedding_dropout=0.0)
    lora = LoRAConfig(r=4, alpha=8, dropout=0.0, target_modules=("q_proj", "v_proj", "fc1"), modules_to_save=("output_proj",))
    torch.manual_seed(0)
    base = {k: v.astype(dtype) for k, v in torch_impl.state_dict_numpy(torch_impl.Transformer(config)).items()}
    torch.manual_seed(1)
    start = torch_lora.adapter_tensors(torch_lora.apply_lora(torch_impl.Transformer(config), lora))  # float32 init, any dtype
    start = {k: v.astype(dtype) for k, v in start.items()}
    peft_model = torch_lora.apply_lora(torch_impl.from_numpy(config, {k: v.copy() for k, v in base.items()}), lora)
    torch_lora.set_adapter_tensors(peft_model, start)
    params = jax_impl.params_from_state_dict(config, base)
    adapters = jax_lora.adapters_from_tensors(config, lora, start)
    rng = np.random.default_rng(0)
    src = rng.integers(1, 12, size=(4, 6)).astype(np.int32)
    tgt = rng.integers(1, 12, size=(4, 6)).astype(np.int32)
    tgt[:, -1] = 0  # some padding, ignored by the loss
    tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:]

    optimizer = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.999), eps=1e-8)
    losses_t = []
    peft_model.train()
    for _ in range(steps):
        logits = peft_model(torch.from_numpy(src), torch.from_numpy(tgt_in))
        loss = F.cross_entropy(logits.reshape(-1, 12), torch.from_numpy(tgt_out).long().reshape(-1), ignore_index=0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses_t.append(loss.item())

    model = jax_impl.Transformer(config)
    tx = optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8)

    def loss_fn(a):
        logits = jax_lora.lora_apply(model, params, a, lora, src, tgt_in)
        per_token = optax.softmax_cross_entropy_with_integer_labels(logits, tgt_out)
        mask = (tgt_out != 0).astype(per_token.dtype)
        return jnp.sum(per_token * mask) / jnp.sum(mask)

    @jax.jit
    def step(a, state):
        loss, grads = jax.value_and_grad(loss_fn)(a)
        # optax's bias correction computes decay ** (int32 step count), which the strict dtype
        # promotion of parity_tests/conftest.py rejects; the model code above stays strict.
        with jax.numpy_dtype_promotion("standard"):
            updates, state = tx.update(grads, state, a)
            return optax.apply_updates(a, updates), state, loss

    with jax.numpy_dtype_promotion("standard"):
        state, losses_j = tx.init(adapters), []
    for _ in range(steps):
        adapters, state, loss = step(adapters, state)
        losses_j.append(float(loss))
    final_j = jax_lora.tensors_from_adapters(config, lora, adapters)
    return np.array(losses_t), np.array(losses_j), torch_lora.adapter_tensors(peft_model), final_j


def test_fifty_adam_steps_follow_the_same_trajectory() -> None:
    """Plain Adam (torch.optim.Adam / optax.adam, same betas and eps) on LoRA + a saved module.

    lr 1e-3 is the book's LoRA rate. Step 0 is bit-identical; afterwards float32 rounding noise
    (different kernels) feeds back through the updates; both trajectories also run in float64,
    which measures how far each stack's float32 run strays by rounding alone (the bound).
    """
    losses_t, losses_j, final_t, final_j = _fifty_adam_steps("float32")
    with jax.enable_x64():
        losses_t64, losses_j64, final_t64, final_j64 = _fifty_adam_steps("float64")
    assert final_t64[next(iter(final_t64))].dtype == np.float64
    assert losses_t[-1] < 0.9 * losses_t[0]  # it did train
    assert_all_close("lora: adam losses", {"losses": (losses_t, losses_j, losses_t64, losses_j64)}, PRECISION, "50 steps")
    quads = {k: (final_t[k], final_j[k], final_t64[k], final_j64[k]) for k in final_t}
    assert_all_close("lora: adam final adapter", quads, PRECISION, "after 50 steps")


# -- config --------------------------------------------------------------------------------------
def test_lora_config_json_round_trip_and_scaling(tmp_path) -> None:
    lora = LoRAConfig(r=4, alpha=16, dropout=0.1, target_modules=("v_proj", "q_proj"), use_rslora=True, modules_to_save=["output_proj"])
    assert lora.target_modules == ("q_proj", "v_proj") and lora.modules_to_save == ("output_proj",)
    assert LoRAConfig.from_json(lora.to_json()) == lora
    lora.save(tmp_path / "lora.json")
    assert LoRAConfig.load(tmp_path / "lora.json") == lora
    assert lora.scaling == 16 / 2 and lora.replace(use_rslora=False).scaling == 4
    assert LoRAConfig.from_json(LoRAConfig(target_modules=r".*q_proj").to_json()).target_modules == r".*q_proj"
    assert LoRAConfig() == LoRAConfig(r=16, alpha=32, dropout=0.05, target_modules=("q_proj", "v_proj"))  # the book's


def test_lora_config_lists_every_problem() -> None:
    with pytest.raises(LoRAConfigError) as error:
        LoRAConfig(r=0, alpha=-1, dropout=1.0, target_modules=(), bias="all")
    for fragment in ("r must be", "alpha must", "dropout must", "target_modules must", "bias 'all'"):
        assert fragment in str(error.value)
    with pytest.raises(LoRAConfigError, match="not a valid regular expression"):
        LoRAConfig(target_modules="(")
    with pytest.raises(LoRAConfigError, match="unknown LoRAConfig field"):
        LoRAConfig.from_dict({"rank": 4})


def test_targets_that_do_not_fit_the_model_are_listed() -> None:
    config = ModelConfig(src_vocab_size=9, tgt_vocab_size=9, d_model=8, num_heads=2, d_ff=8,
                         num_encoder_layers=1, num_decoder_layers=1, max_len=8, tie_embeddings="tgt_out")
    with pytest.raises(LoRAConfigError) as error:
        resolve_targets(config, LoRAConfig(target_modules=("query", "q_proj", "self_attn", "tgt_embed", "output_proj")))
    message = str(error.value)
    assert "unknown target module 'query'" in message
    assert "'encoder.layers.0.self_attn' is a container module" in message
    assert "'tgt_embed' is a embedding module" in message
    assert "'output_proj' is a bias module" in message
    with pytest.raises(LoRAConfigError, match="matches no module"):
        resolve_targets(config, LoRAConfig(target_modules=r"encoder\.layers\.7\..*"))
    assert [t.module for t in resolve_targets(config, LoRAConfig(target_modules=r"decoder\..*cross_attn\.v_proj"))] == [
        "decoder.layers.0.cross_attn.v_proj"
    ]
