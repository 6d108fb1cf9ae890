"""`twinformer finetune` (LoRA and full) on the toy task, on a base trained for a few steps by `train`.

Covered: the parameter report, LoRA checkpoints as PEFT adapter directories with Adam moments for
the adapter only, bit-exact resume within each framework, full fine-tuning on the base's tokenizer,
`translate --adapter` and `evaluate --adapter` in both stacks, and clear errors.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.checkpoints.checkpoint import read_tensors
from shared.training.finetune import finetune, read_lora_config, read_train_config
from shared.training.metrics_log import read_metrics
from shared.training.train_config import TrainConfig
from twinformer.backends import make_backend, make_lora_backend
from twinformer.cli import main

REPO = Path(__file__).resolve().parents[1]
STEPS, SPLIT_AT = 6, 3
# Fine-tune on the reverse direction (the base learnt xa -> xb); dropout on, so resume must replay it.
FT_TRAIN = dict(
    src_lang="xb", tgt_lang="xa", batch_size=16, max_len=32, pad_to_multiple=16, total_steps=STEPS,
    optimizer="adamw", lr=1e-3, schedule="inverse_sqrt", warmup_steps=2, clip_norm=1.0,
    log_every=1, save_every=0, keep_last=None, bleu_sentences=4, max_decode_len=6,
)  # fmt: skip
LORA = dict(r=4, alpha=8, dropout=0.1, target_modules=["q_proj", "v_proj", "fc1"], modules_to_save=["output_proj"])
REPORT = re.compile(r"trainable params: ([\d,]+) \|\| all params: ([\d,]+) \|\| trainable%: ([\d.]+)")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _last_json(output: str) -> dict:
    return json.loads(output.strip().splitlines()[-1])


def _same_tensors(a: Path, b: Path) -> None:
    """Tensor bytes equal (not file bytes: safetensors writes metadata keys in hash-map order)."""
    ta, tb = read_tensors(a), read_tensors(b)
    assert sorted(ta) == sorted(tb), a.name
    for key in ta:
        assert ta[key].dtype == tb[key].dtype and ta[key].tobytes() == tb[key].tobytes(), f"{a.name}: {key}"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A base model (configs/toy.json, 4 steps of `twinformer train`) and fine-tuning recipes."""
    root = tmp_path_factory.mktemp("finetune")
    toy = TrainConfig.load(REPO / "configs" / "toy.json")
    # The recipe with one layer per side (half the JAX compile time), fewer sentences per step and
    # no BLEU pass: seconds, not minutes.
    base_config = toy.replace(model_overrides={**toy.model_overrides, "num_encoder_layers": 1, "num_decoder_layers": 1},
                              batch_size=16, eval_every=0, save_every=0, bleu_sentences=0, log_every=1)  # fmt: skip
    base_config.save(root / "toy-base.json")
    assert main(["train", "--framework", "torch", "--config", str(root / "toy-base.json"), "--run-dir",
                 str(root / "base"), "--steps", "4", "--no-progress"]) == 0  # fmt: skip
    (root / "lora.json").write_text(json.dumps({"lora": LORA, "train": FT_TRAIN}))
    (root / "full.json").write_text(json.dumps({"train": {**FT_TRAIN, "lr": 2e-5, "weight_decay": 0.01}}))
    return root


_LORA_RUNS: dict[str, tuple[Path, dict, str]] = {}


def lora_run(work: Path, framework: str, capsys) -> tuple[Path, dict, str]:
    """(run dir, summary, printed output) of an uninterrupted CLI LoRA fine-tune (made once per framework)."""
    if framework not in _LORA_RUNS:
        run_dir = work / f"lora-{framework}"
        capsys.readouterr()
        assert main(["finetune", "--framework", framework, "--base", str(work / "base"), "--lora",
                     str(work / "lora.json"), "--run-dir", str(run_dir), "--no-progress"]) == 0  # fmt: skip
        out = capsys.readouterr().out
        _LORA_RUNS[framework] = (run_dir, _last_json(out), out)
    return _LORA_RUNS[framework]


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_lora_finetune_checkpoints_an_adapter_and_resumes_bit_exactly(work, framework, capsys):
    import peft

    import torch_impl
    from shared.checkpoints.adapter_io import expected_adapter_shapes
    from shared.checkpoints.checkpoint import load_checkpoint
    from torch_impl import lora as torch_lora

    run_dir, summary, out = lora_run(work, framework, capsys)
    assert summary["mode"] == "lora" and summary["step"] == STEPS and summary["adapter"] == summary["checkpoint"]
    final = Path(summary["checkpoint"])
    assert sorted(p.name for p in final.iterdir()) == sorted([
        "adapter_config.json", "adapter_model.safetensors", "base_config.json", "optimizer.safetensors",
        "rng.safetensors", "tokenizer.json", "train_config.json", "trainer_state.json"])  # fmt: skip

    # The adapter holds exactly PEFT's keys; Adam moments exist for those tensors only (none for the base).
    base_dir = work / "base" / "checkpoints" / "step_0000004"
    base_model_config, base_tensors = load_checkpoint(base_dir)
    lora = read_lora_config(work / "lora.json")
    adapter = read_tensors(final / "adapter_model.safetensors")
    assert {k: v.shape for k, v in adapter.items()} == expected_adapter_shapes(base_model_config, lora)
    moments = read_tensors(final / "optimizer.safetensors")
    assert set(moments) == {"step"} | {f"{m}.{k}" for m in ("exp_avg", "exp_avg_sq") for k in adapter}
    assert int(moments["step"][0]) == STEPS and all(np.any(moments[f"exp_avg.{k}"]) for k in adapter)
    # PEFT itself loads the checkpoint directory as an adapter, whichever stack wrote it.
    peft_model = peft.PeftModel.from_pretrained(torch_impl.load(base_dir), final)
    loaded = torch_lora.adapter_tensors(peft_model)
    assert sorted(loaded) == sorted(adapter) and all(np.array_equal(loaded[k], adapter[k]) for k in adapter)

    # The parameter report, printed at the start: PEFT's counts (total includes the adapter).
    trainable, total, percent = REPORT.search(out).groups()
    n_adapter, n_base = sum(v.size for v in adapter.values()), sum(v.size for v in base_tensors.values())
    assert (int(trainable.replace(",", "")), int(total.replace(",", ""))) == (n_adapter, n_base + n_adapter)
    assert abs(float(percent) - 100 * n_adapter / (n_base + n_adapter)) < 1e-3

    # Interrupted at SPLIT_AT, resumed by the CLI in a fresh backend: the same run, bit for bit.
    split = work / f"lora-{framework}-split"
    first = finetune(framework, split, base=work / "base", mode="lora", lora=lora,
                     config=read_train_config(work / "lora.json"), stop_at=SPLIT_AT, progress=False,
                 backend_factory=make_backend, lora_backend_factory=make_lora_backend)  # fmt: skip
    assert first.step == SPLIT_AT
    assert main(["finetune", "--framework", framework, "--resume", str(split), "--no-progress"]) == 0
    resumed = _last_json(capsys.readouterr().out)
    assert resumed["step"] == STEPS and resumed["run_dir"] == str(split)
    for name in ("adapter_model.safetensors", "optimizer.safetensors"):
        _same_tensors(final / name, Path(resumed["checkpoint"]) / name)
    losses = lambda d: [(r["step"], r["loss"]) for r in read_metrics(d / "metrics.jsonl") if r["kind"] == "train"]
    assert losses(split) == losses(run_dir) and len(losses(run_dir)) == STEPS


def test_full_finetune_keeps_the_base_tokenizer_and_resumes_bit_exactly(work, capsys):
    from shared.checkpoints.checkpoint import load_checkpoint

    base_dir = work / "base" / "checkpoints" / "step_0000004"
    args = ["finetune", "--framework", "torch", "--base", str(work / "base"), "--full", "--config", str(work / "full.json")]
    assert main([*args, "--run-dir", str(work / "full"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    summary = _last_json(out)
    assert summary["mode"] == "full" and "adapter" not in summary and "trainable%: 100.0000" in out
    final = Path(summary["checkpoint"])
    assert (final / "tokenizer.json").read_bytes() == (base_dir / "tokenizer.json").read_bytes()
    config, tensors = load_checkpoint(final)
    base_config, base_tensors = load_checkpoint(base_dir)
    assert config == base_config and any(not np.array_equal(tensors[k], base_tensors[k]) for k in tensors)
    trainer_state = json.loads((final / "trainer_state.json").read_text())["finetune"]
    assert trainer_state["mode"] == "full" and trainer_state["base_checkpoint"] == str(base_dir)
    saved = json.loads((final / "train_config.json").read_text())
    assert (saved["lr"], saved["weight_decay"], saved["optimizer"]) == (2e-5, 0.01, "adamw")

    finetune("torch", work / "full-split", base=work / "base", mode="full",
             config=read_train_config(work / "full.json"), stop_at=SPLIT_AT, progress=False,
             backend_factory=make_backend, lora_backend_factory=make_lora_backend)  # fmt: skip
    assert main(["finetune", "--framework", "torch", "--resume", str(work / "full-split"), "--no-progress"]) == 0
    resumed = Path(_last_json(capsys.readouterr().out)["checkpoint"])
    for name in ("model.safetensors", "optimizer.safetensors"):
        _same_tensors(final / name, resumed / name)

    # `train --resume` continues a full fine-tuning run too, and keeps its record of the base.
    assert main(["train", "--framework", "torch", "--resume", str(work / "full-split"), "--steps", str(STEPS + 1),
                 "--no-progress"]) == 0
    further = Path(_last_json(capsys.readouterr().out)["checkpoint"])
    assert json.loads((further / "trainer_state.json").read_text())["finetune"] == trainer_state


def test_translate_and_evaluate_accept_the_adapter(work, capsys):
    run_dir, summary, _ = lora_run(work, "torch", capsys)
    base_dir = work / "base" / "checkpoints" / "step_0000004"
    sentences = ["lo eka soru dosa", "mi ifo fale sen lo oma"]
    outputs = {}
    for framework in ("torch", "jax"):
        assert main(["translate", "--checkpoint", str(base_dir), "--adapter", summary["adapter"],
                     "--framework", framework, "--max-new-tokens", "8", *sentences]) == 0  # fmt: skip
        outputs[framework] = capsys.readouterr().out.splitlines()
    assert len(outputs["torch"]) == 2 and outputs["torch"] == outputs["jax"]

    # --adapter takes the LoRA run; its data settings (xb -> xa) are the defaults. On the run's own
    # validation split, the loss is the one the run reported at its end (same adapter, same batches).
    # A LoRA run given as --checkpoint is evaluated on the base it recorded.
    results = {}
    for framework, where in (("torch", ["--checkpoint", str(work / "base"), "--adapter", str(run_dir)]),
                             ("jax", ["--checkpoint", str(run_dir)])):  # fmt: skip
        assert main(["evaluate", *where, "--framework", framework, "--split", "val", "--no-bleu", "--json"]) == 0
        results[framework] = _last_json(capsys.readouterr().out)
        assert results[framework]["adapter"] == summary["adapter"] and results[framework]["split"] == "val"
        assert results[framework]["checkpoint"] == str(base_dir)
    assert abs(results["torch"]["loss"] - summary["val_loss"]) < 1e-6
    assert abs(results["jax"]["loss"] - summary["val_loss"]) < 1e-4 * summary["val_loss"]
    assert main(["evaluate", "--checkpoint", str(work / "base"), "--src-lang", "xb", "--tgt-lang", "xa",
                 "--split", "val", "--no-bleu", "--json"]) == 0  # fmt: skip
    without = _last_json(capsys.readouterr().out)
    assert without["tokens"] == results["torch"]["tokens"] and without["loss"] != results["torch"]["loss"]


def test_clear_errors(work, capsys):
    import torch_impl
    from shared.checkpoints.checkpoint import load_checkpoint

    def error_of(*argv: str) -> str:
        assert main(list(argv)) == 2
        return capsys.readouterr().err

    err = error_of("finetune", "--framework", "torch", "--lora", str(work / "lora.json"), "--full")
    assert "either --lora CONFIG or --full, not both" in err and "give --base DIR" in err
    err = error_of("finetune", "--framework", "jax", "--base", str(work / "base"))
    assert "--lora CONFIG (adapters only) or --full (every weight)" in err
    err = error_of("finetune", "--framework", "torch", "--base", str(work / "base"), "--full")
    assert "give --config FILE" in err

    # A base of another width: the adapter cannot fit it; every misfit is named.
    run_dir, summary, _ = lora_run(work, "torch", capsys)
    base_dir = work / "base" / "checkpoints" / "step_0000004"
    config, _ = load_checkpoint(base_dir)
    other = work / "other-base"
    torch_impl.save(torch_impl.Transformer(config.replace(d_model=32, d_ff=64)), other)
    shutil.copy(base_dir / "tokenizer.json", other / "tokenizer.json")
    for command in (["evaluate", "--checkpoint", str(other), "--adapter", str(run_dir)],
                    ["translate", "--checkpoint", str(other), "--adapter", summary["adapter"], "lo eka dosa"]):  # fmt: skip
        err = error_of(*command)
        assert "does not fit the base model" in err and "shape mismatch for base_model.model.encoder.layers.0.self_attn.q_proj.lora_A.weight" in err
    err = error_of("finetune", "--framework", "torch", "--resume", str(run_dir), "--base", str(other))
    assert "holds another model than the run's base" in err
    # Same shapes, other weights: refused by the base fingerprint recorded in the run.
    retrained = work / "retrained-base"
    torch.manual_seed(1)
    torch_impl.save(torch_impl.Transformer(config), retrained)
    shutil.copy(base_dir / "tokenizer.json", retrained / "tokenizer.json")
    err = error_of("finetune", "--framework", "jax", "--resume", str(run_dir), "--base", str(retrained))
    assert "differ from the base this run was trained on" in err
    # ... and by every command that applies the adapter (#18 item 3), in one line naming both hashes;
    # --force applies it anyway.
    recorded = json.loads((Path(summary["adapter"]) / "trainer_state.json").read_text())["finetune"]["base_sha256"]
    for command in (["translate", "--checkpoint", str(retrained), "--adapter", summary["adapter"], "lo eka dosa"],
                    ["evaluate", "--checkpoint", str(retrained), "--adapter", str(run_dir), "--no-bleu"]):  # fmt: skip
        err = error_of(*command)
        assert f"trained on base sha256 {recorded[:16]}" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert main(["translate", "--checkpoint", str(retrained), "--adapter", summary["adapter"], "--force", "lo eka dosa"]) == 0
    assert "warning (--force)" in capsys.readouterr().err
    # A LoRA run is not a pre-training run; a base without its tokenizer cannot be fine-tuned.
    err = error_of("train", "--framework", "torch", "--resume", str(run_dir))
    assert "holds a LoRA adapter" in err and "twinformer finetune --resume" in err
    (retrained / "tokenizer.json").unlink()
    err = error_of("finetune", "--framework", "torch", "--base", str(retrained), "--lora", str(work / "lora.json"),
                   "--run-dir", str(work / "never"))  # fmt: skip
    assert "reuses the base's tokenizer" in err and not (work / "never").exists()


def test_shipped_recipes_carry_the_book_chapter_5_settings():
    lora = read_lora_config(REPO / "configs" / "finetune-lora.json")
    assert (lora.r, lora.alpha, lora.dropout, lora.target_modules, lora.bias) == (16, 32, 0.05, ("q_proj", "v_proj"), "none")
    lora_train = read_train_config(REPO / "configs" / "finetune-lora.json")
    full_train = read_train_config(REPO / "configs" / "finetune-full.json")
    assert (lora_train.lr, lora_train.total_steps) == (1e-3, 300)
    assert (full_train.optimizer, full_train.lr, full_train.weight_decay, full_train.batch_size) == ("adamw", 2e-5, 0.01, 8)
    with pytest.raises(Exception, match="without a 'lora' section"):
        read_lora_config(REPO / "configs" / "finetune-full.json")
