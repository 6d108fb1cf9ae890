"""One directory rule for every command (shared/checkpoints/paths.py), and merge/average outputs that
are as usable as the checkpoints they came from."""

from __future__ import annotations

import json

import pytest
import torch

from shared.checkpoints.paths import CheckpointNotFound, CheckpointPathError, resolve
from shared.training.run_checkpoint import latest_checkpoint, list_checkpoints
from tests.conftest import TINY_RUN
from twinformer.cli import main

SENTENCES = ["lo eka soru dosa", "mi ifo fale"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def run_dir(tiny_run):
    return tiny_run


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def translations(capsys, checkpoint, *extra: str) -> list[str]:
    code, out, err = run_cli(capsys, "translate", "--checkpoint", str(checkpoint), "--max-new-tokens", "6", *extra,
                             *SENTENCES)  # fmt: skip
    assert code == 0, err
    return out.splitlines()


def test_every_form_of_a_run_names_its_latest_checkpoint(run_dir, capsys):
    latest = latest_checkpoint(run_dir)
    forms = [run_dir, run_dir / "checkpoints", run_dir / "checkpoints" / "latest", latest]
    assert [resolve(form, "model") for form in forms] == [latest] * 4
    assert [resolve(form, "training") for form in forms] == [latest] * 4
    expected = translations(capsys, latest)
    assert len(expected) == 2
    for form in forms[:3]:
        assert translations(capsys, form) == expected

    code, out, err = run_cli(capsys, "parity", "--checkpoint", str(run_dir))
    assert code == 0 and f"checkpoint {latest}" in out, err
    code, out, err = run_cli(capsys, "evaluate", "--checkpoint", str(run_dir / "checkpoints" / "latest"),
                             "--max-sentences", "4", "--no-bleu", "--json")  # fmt: skip
    assert code == 0 and json.loads(out)["checkpoint"] == str(latest), err


@pytest.mark.parametrize("command", [
    ["translate", "--checkpoint", "{missing}", "a sentence"],
    ["evaluate", "--checkpoint", "{missing}"],
    ["parity", "--checkpoint", "{missing}"],
    ["merge", "--base", "{missing}", "--adapter", "{run}", "--out", "{out}"],
    ["average", "--run", "{missing}", "--out", "{out}"],
    ["average", "--checkpoints", "{missing}", "--out", "{out}"],
    ["finetune", "--framework", "torch", "--base", "{missing}", "--full", "--config", "{config}"],
    ["train", "--framework", "torch", "--resume", "{missing}"],
])  # fmt: skip
def test_a_missing_path_is_reported_as_missing(command, run_dir, tmp_path, capsys):
    missing = tmp_path / "no-such-run"
    values = {"missing": missing, "run": run_dir, "out": tmp_path / "out", "config": run_dir / "train_config.json"}
    code, _, err = run_cli(capsys, *[part.format(**values) for part in command])
    assert code == 2 and f"{missing} does not exist" in err
    assert "Tokenizer.save" not in err and "Traceback" not in err


def test_relative_forms_resolve_too(run_dir, monkeypatch):
    monkeypatch.chdir(run_dir / "checkpoints")
    latest = latest_checkpoint(run_dir).resolve()
    assert [resolve(form, "training").resolve() for form in ("latest", ".", "..")] == [latest] * 3


def test_paths_that_are_not_checkpoints_say_what_they_are(run_dir, tmp_path):
    with pytest.raises(CheckpointNotFound, match="does not exist"):
        resolve(tmp_path / "nope")
    (tmp_path / "empty-run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointPathError, match="has no checkpoint yet"):
        resolve(tmp_path / "empty-run")
    with pytest.raises(CheckpointPathError, match="config.json and model.safetensors missing"):
        resolve(tmp_path)
    with pytest.raises(CheckpointPathError, match="is a file"):
        resolve(run_dir / "metrics.jsonl")
    with pytest.raises(CheckpointPathError, match="holds no adapter_config.json"):
        resolve(run_dir, "adapter")
    averaged = tmp_path / "weights-only"
    averaged.mkdir()
    for name in ("config.json", "model.safetensors"):
        (averaged / name).write_bytes((latest_checkpoint(run_dir) / name).read_bytes())
    assert resolve(averaged) == averaged
    with pytest.raises(CheckpointPathError, match="is a weights-only checkpoint .* not a training checkpoint"):
        resolve(averaged, "training")


@pytest.fixture(scope="module")
def adapter_dir(run_dir, tmp_path_factory):
    """A LoRA adapter on the run's model, with B made non-zero so that it changes translations."""
    import torch_impl
    from shared.checkpoints.lora_config import LoRAConfig
    from torch_impl import lora

    peft_model = lora.apply_lora(torch_impl.load(latest_checkpoint(run_dir)), LoRAConfig(r=2, alpha=4, dropout=0.0))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator))
    return lora.save_adapter(peft_model, tmp_path_factory.mktemp("adapter") / "adapter")


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_a_merged_checkpoint_translates_and_evaluates_as_is(framework, run_dir, adapter_dir, tmp_path, capsys):
    out = tmp_path / "merged"
    code, stdout, err = run_cli(capsys, "merge", "--base", str(run_dir), "--adapter", str(adapter_dir), "--out", str(out),
                                "--framework", framework)  # fmt: skip
    assert code == 0 and "with tokenizer.json, train_config.json" in stdout, err
    assert (out / "tokenizer.json").is_file() and (out / "train_config.json").is_file()
    # The merged model is the base with the adapter: the same translations, without --adapter.
    assert translations(capsys, out) == translations(capsys, run_dir, "--adapter", str(adapter_dir))
    code, stdout, err = run_cli(capsys, "evaluate", "--checkpoint", str(out), "--max-sentences", "4", "--no-bleu")
    assert code == 0 and "loss" in stdout, err


def test_merge_takes_framework_like_every_command_and_keeps_stack(run_dir, adapter_dir, tmp_path, capsys):
    for flag in ("--framework", "--stack"):
        code, _, err = run_cli(capsys, "merge", "--base", str(run_dir), "--adapter", str(adapter_dir), "--out",
                               str(tmp_path / flag), flag, "jax")  # fmt: skip
        assert code == 0, err


def test_merge_refuses_a_non_empty_out_unless_overwrite(run_dir, adapter_dir, tmp_path, capsys):
    out = tmp_path / "used"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    merge = ["merge", "--base", str(run_dir), "--adapter", str(adapter_dir), "--out", str(out)]
    code, _, err = run_cli(capsys, *merge)
    assert code != 0 and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    code, _, err = run_cli(capsys, *merge, "--overwrite")
    assert code == 0, err
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["used"]  # no temporary left behind


def test_average_refuses_a_non_empty_out_unless_overwrite(run_dir, tmp_path, capsys):
    out = tmp_path / "used"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, "average", "--run", str(run_dir), "--out", str(out))
    assert code != 0 and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    code, _, err = run_cli(capsys, "average", "--run", str(run_dir), "--out", str(out), "--overwrite")
    assert code == 0, err
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["used"]


def test_average_defaults_to_every_checkpoint_the_run_kept(run_dir, tmp_path, capsys):
    kept = list_checkpoints(run_dir)
    assert len(kept) == TINY_RUN.keep_last
    out = tmp_path / "avg"
    code, stdout, err = run_cli(capsys, "average", "--run", str(run_dir), "--out", str(out))
    assert code == 0 and f"averaged {len(kept)} checkpoint(s) ({', '.join(p.name for p in kept)})" in stdout, err
    assert (out / "tokenizer.json").is_file() and (out / "train_config.json").is_file()
    assert len(translations(capsys, out)) == 2
    code, _, err = run_cli(capsys, "average", "--run", str(latest_checkpoint(run_dir)), "--out", str(out))
    assert code == 2 and "is not a run directory" in err
