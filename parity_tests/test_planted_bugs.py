"""Every planted formula difference (parity_tests/planted_bugs.py and below) is caught.

Forward bugs: the suite's forward check fails, and `twinformer parity`'s report names the first
module where the stacks part. Training, LoRA and decoding bugs: the suite's own test for that
part fails (called directly, with the bug planted in one stack only). The margins (how far above
the bound each bug lands) are printed by `python -m parity_tests.planted_bugs` and kept in README.md.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import pytest
import torch
import torch.nn.functional as F

import jax_impl
from parity_tests import planted_bugs
from parity_tests import strategies as pst
from parity_tests import test_decoding, test_lora, test_training_parity
from parity_tests.test_forward import check_forward
from shared.checkpoints.lora_config import LoRAConfig
from shared.config.model_config import ModelConfig
from twinformer.parity_report import first_parting

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- forward: the suite's check and `twinformer parity` -------------------------------------------------
@pytest.mark.parametrize("bug", planted_bugs.FORWARD_BUGS, ids=lambda bug: bug.name)
def test_forward_bug_is_caught_and_located(parity_env, monkeypatch, bug):
    if parity_env.precision == "bfloat16":
        pytest.skip("margins at bfloat16: python -m parity_tests.planted_bugs --dtype bfloat16")
    if parity_env.precision != "float32" and not bug.above_16bit_rounding:
        pytest.skip(f"{bug.name}: below one {parity_env.precision} rounding; caught by the float32 run")
    config = planted_bugs.FORWARD_CONFIG
    tensors, src, tgt = planted_bugs.forward_inputs()
    bug.plant(monkeypatch)
    parting = first_parting(planted_bugs.report_diffs(None, precision=parity_env.precision, device=parity_env.device))
    assert parting is not None and parting.name == bug.first_module, (
        f"{bug.name}: twinformer parity names {parting and parting.name}, expected {bug.first_module}"
    )
    case = pst.ParityCase(config, seed=0, batch=pst.Batch(src=src, tgt_in=tgt, tgt_out=tgt))
    params = parity_env.jax_put(jax_impl.params_from_state_dict(config, tensors))
    with pytest.raises(AssertionError, match="beyond their bound"):
        check_forward(parity_env, case, tensors, params, f"planted: {bug.name}")


def test_report_without_a_bug_parts_nowhere(parity_env):
    """The same model and inputs with nothing planted: every module within its bound."""
    diffs = planted_bugs.report_diffs(None, precision=parity_env.precision, device=parity_env.device)
    assert first_parting(diffs) is None, max(diffs, key=lambda d: d.comparison.ratio)


# -- training (the suite's AdamW + clipping + label smoothing trajectory, and eval_batch) ---------------
def _adam_without_bias_correction(b1, b2, eps, eps_root=0.0):
    """optax.scale_by_adam without the 1 / (1 - beta^t) corrections."""

    def init(params):
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        return zeros, zeros

    def update(updates, state, params=None):
        mu = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, state[0], updates)
        nu = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, state[1], updates)
        return jax.tree_util.tree_map(lambda m, v: m / (jnp.sqrt(v + eps_root) + eps), mu, nu), (mu, nu)

    return optax.GradientTransformation(init, update)


def _plant_adam_without_bias_correction(mp):  # jax
    mp.setattr(optax, "scale_by_adam", _adam_without_bias_correction)


def _plant_per_tensor_clipping(mp):  # torch
    from torch_impl import training

    def clip_each(grads, max_norm, norm):
        for g in grads:
            g.mul_(torch.clamp(max_norm / g.norm(), max=1.0))

    mp.setattr(training, "clip_by_global_norm_", clip_each)


def _plant_label_smoothing_over_the_other_classes(mp):  # torch
    from torch_impl import training

    def smoothed(logits, targets, pad_id, label_smoothing=0.0):
        logp = F.log_softmax(logits, dim=-1)  # (B, T, V)
        target_logp = logp.gather(-1, targets.long()[..., None])[..., 0]
        others = (logp.sum(-1) - target_logp) / (logits.shape[-1] - 1)  # a / (V - 1) on each wrong class
        per_token = -(1 - label_smoothing) * target_logp - label_smoothing * others
        keep = (targets != pad_id).to(per_token.dtype)
        return (per_token * keep).sum() / keep.sum()

    mp.setattr(training, "masked_cross_entropy", smoothed)


def _plant_decay_mask(mp):  # torch: no decay on biases and norm parameters (a common L2-style mask)
    from torch_impl import training

    def build(model, config):
        cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        trainable = [p for p in model.parameters() if p.requires_grad]
        groups = [
            {"params": [p for p in trainable if p.ndim > 1], "weight_decay": config.weight_decay},
            {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0},
        ]
        return cls(groups, lr=config.lr, betas=config.betas, eps=config.eps, foreach=True)

    mp.setattr(training, "build_optimizer", build)


TRAJECTORY_BUGS = {
    "adam without bias correction (jax)": _plant_adam_without_bias_correction,
    "per-tensor clipping (torch)": _plant_per_tensor_clipping,
    "label smoothing over the other classes (torch)": _plant_label_smoothing_over_the_other_classes,
    "weight decay skips biases and norms (torch)": _plant_decay_mask,
}


@pytest.fixture(scope="module")
def toy_data():
    return test_training_parity.toy_batches()


@pytest.fixture
def fresh_jax_steps():
    """The jitted train steps are cached per optimizer setting: rebuild them around a planted optimizer."""
    from jax_impl import training

    training._compiled.cache_clear()
    yield
    training._compiled.cache_clear()


@pytest.mark.parametrize("plant", TRAJECTORY_BUGS.values(), ids=TRAJECTORY_BUGS.keys())
def test_training_bug_is_caught(parity_env, toy_data, monkeypatch, request, plant):
    if plant is _plant_adam_without_bias_correction:
        request.getfixturevalue("fresh_jax_steps")
    plant(monkeypatch)
    tokenizer, batches = toy_data
    with pytest.raises(AssertionError, match="beyond their bound") as caught:
        test_training_parity.test_adamw_clipping_smoothing_warmup_trajectory(parity_env, (tokenizer, batches))
    print(f"\n{request.node.callspec.id}: {str(caught.value).splitlines()[1].strip()}")  # the worst array: the margin


def test_dropout_left_on_in_eval_batch_is_caught(parity_env, toy_data, monkeypatch):
    from torch_impl.training import TorchBackend

    @torch.no_grad()
    def eval_batch(self, batch):  # TorchBackend.eval_batch without self.model.eval()
        src, tgt_in, tgt_out = self._tensors(batch)
        logits = self.model(src, tgt_in)
        nll = F.cross_entropy(logits.flatten(0, 1), tgt_out.flatten(), ignore_index=self.model_config.pad_id, reduction="sum")
        return float(nll), int((tgt_out != self.model_config.pad_id).sum())

    monkeypatch.setattr(TorchBackend, "eval_batch", eval_batch)
    with pytest.raises(AssertionError, match="not deterministic"):
        test_training_parity.test_eval_batch_is_deterministic_and_agrees_with_dropout_configured(parity_env, toy_data)


# -- LoRA ------------------------------------------------------------------------------------------------
def test_lora_scaled_by_alpha_instead_of_alpha_over_r_is_caught(monkeypatch):
    from shared.checkpoints.lora_config import LoRAConfig

    monkeypatch.setattr(LoRAConfig, "scaling", property(lambda self: float(self.alpha)))  # read by jax_impl only
    with pytest.raises(AssertionError):
        test_lora.test_fresh_adapter_changes_nothing_and_unmerges_bit_exactly()


def test_lora_dropout_left_on_in_eval_is_caught(monkeypatch):
    from torch_impl import lora as torch_lora

    class AlwaysDropout(torch.nn.Dropout):
        def forward(self, x):
            return F.dropout(x, self.p, training=True)

    original = torch_lora.apply_lora

    def apply_lora(model, lora):
        peft_model = original(model, lora)
        for name, module in peft_model.named_modules():
            if ".lora_dropout." in f"{name}." and isinstance(module, torch.nn.Dropout):
                module.__class__ = AlwaysDropout
        return peft_model

    monkeypatch.setattr(torch_lora, "apply_lora", apply_lora)
    with pytest.raises(AssertionError, match="not deterministic"):
        test_lora.test_lora_dropout_is_off_in_eval_mode()


# -- decoding --------------------------------------------------------------------------------------------
def test_top_k_temperature_multiplied_is_caught(parity_env, monkeypatch):
    from torch_impl import generate

    true_choose = generate.choose_next

    def choose(logits, u, config, banned=()):  # torch_impl.generate.choose_next with * instead of /
        multiplied = config.replace(temperature=1.0)
        return true_choose(logits * config.temperature if config.do_sample else logits, u, multiplied, banned)

    monkeypatch.setattr(generate, "choose_next", choose)
    with pytest.raises(AssertionError, match="torch: frequencies"):
        test_decoding.test_top_k_sampling_follows_softmax_of_logits_over_temperature(parity_env)


# -- the nine survivors of issue #18 (plants and their seams: planted_bugs.SURVIVOR_SEAMS) -------------
def _t5_tie_default():
    from parity_tests import test_t5_hf_io

    test_t5_hf_io.test_omitted_tie_fields_default_as_transformers_reads_them({})


def _llama_logits():
    from parity_tests import test_causal_lm

    test_causal_lm.check_logits_match_transformers(test_causal_lm.LLAMA_GQA, [6, 3], 4)


def _top_p_boundary():
    from parity_tests import test_top_p_boundary

    test_top_p_boundary.test_reference_rule_keeps_hfs_nucleus_at_the_boundary(0.5)


def _lora_eval():
    test_lora.test_lora_dropout_is_off_in_eval_mode()


def _gpt2_peft_adapter(tmp_path):
    from parity_tests import test_causal_lm_peft

    test_causal_lm_peft.test_a_peft_adapter_over_transformers_gives_its_logits_in_both_stacks(tmp_path, "gpt2")


def _float64_agreement():
    from parity_tests import test_tolerance_derivation

    test_tolerance_derivation.test_float64_agreement_is_the_measured_worst_times_one_decade()


def _bf16_dtypes():
    from parity_tests import test_bf16_mixed

    test_bf16_mixed.test_torch_train_step_computes_in_bf16_and_keeps_fp32_masters()


def _gpt2_gradients():
    from parity_tests import test_causal_lm

    test_causal_lm.check_gradients_agree(test_causal_lm.GPT2_TIED, [5, 2], 3)


SURVIVORS = {  # plant -> the suite's check that kills it (called with no plant it must pass)
    "t5 tie_word_embeddings default": (planted_bugs.plant_t5_tie_default_flipped, _t5_tie_default),
    "llama rope_theta ignored": (planted_bugs.plant_rope_theta_ignored, _llama_logits),
    "top-p > at the boundary": (planted_bugs.plant_top_p_strict_boundary, _top_p_boundary),
    "jax lora dropout under deterministic=True": (planted_bugs.plant_jax_lora_dropout_when_deterministic, _lora_eval),
    "hf adapter rename keeps one name": (planted_bugs.plant_hf_adapter_rename_keeps_one, _gpt2_peft_adapter),
    "FLOAT64_AGREEMENT loosened 10x": (planted_bugs.plant_float64_agreement_loosened, _float64_agreement),
    "torch bf16-mixed trains in fp32": (planted_bugs.plant_torch_bf16_mixed_in_fp32, _bf16_dtypes),
    "gpt2 position embeddings detached (torch)": (planted_bugs.plant_gpt2_position_embeddings_detached, _gpt2_gradients),
    "next-token loss mask shifted (jax)": (planted_bugs.plant_loss_mask_shifted, _gpt2_gradients),
}


# LoRA dropout > 0 in train mode and in eval mode with a dropout rng: test_lora's property on one fixed case
LORA_DROPOUT_CASE = test_lora.Case(
    ModelConfig(src_vocab_size=9, tgt_vocab_size=9, d_model=8, num_heads=2, d_ff=8, num_encoder_layers=1,
                num_decoder_layers=1, max_len=8, dropout=0.0, attention_dropout=0.0, embedding_dropout=0.0),
    LoRAConfig(r=2, alpha=4, dropout=0.5, target_modules=("q_proj", "v_proj", "fc1")),
    seed=3,
)  # fmt: skip
LORA_DROPOUT_BUGS = {
    "jax lora dropout under deterministic=True": planted_bugs.plant_jax_lora_dropout_when_deterministic,
    "jax lora dropout dropped in training": planted_bugs.plant_jax_lora_dropout_dropped_in_training,
    "torch lora dropout dropped in training": planted_bugs.plant_torch_lora_dropout_dropped_in_training,
}


@pytest.mark.parametrize("name", LORA_DROPOUT_BUGS)
def test_lora_dropout_bug_is_caught_by_the_lora_property(monkeypatch, name):
    jax.clear_caches()
    LORA_DROPOUT_BUGS[name](monkeypatch)
    try:
        with pytest.raises(AssertionError):
            test_lora.check_adapted_forward_and_gradients(LORA_DROPOUT_CASE)
    finally:
        monkeypatch.undo()
        jax.clear_caches()


def test_lora_dropout_case_passes_without_a_plant():
    test_lora.check_adapted_forward_and_gradients(LORA_DROPOUT_CASE)


def _call(check, tmp_path):
    return check(tmp_path) if check is _gpt2_peft_adapter else check()


@pytest.mark.parametrize("name", SURVIVORS)
def test_survivor_is_caught(monkeypatch, tmp_path, name):
    from shared.checkpoints.hf_adapter import AdapterError

    plant, check = SURVIVORS[name]
    jax.clear_caches()  # jitted programs keyed on the config would otherwise skip (or keep) the plant
    plant(monkeypatch)
    try:
        with pytest.raises((AssertionError, AdapterError)):
            _call(check, tmp_path)
    finally:
        monkeypatch.undo()
        jax.clear_caches()


@pytest.mark.parametrize("name", SURVIVORS)
def test_survivor_check_passes_without_the_plant(tmp_path, name):
    _call(SURVIVORS[name][1], tmp_path)
