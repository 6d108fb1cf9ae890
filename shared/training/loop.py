"""The framework-agnostic training loop: data, schedule of logging/eval/saving, checkpoints, resume.

The loop drives a *backend* (torch_impl.training.TorchBackend or jax_impl.training.JaxBackend)
that owns the model, the optimizer and the RNG. The caller chooses the framework and hands the loop
a backend factory (the CLI: twinformer/backends.py), so shared/ never imports torch or jax.
Everything the two stacks must agree on lives outside them: the batches (shared.data), the
learning-rate formula (shared.training.schedules), the checkpoint formats (shared.training.run_checkpoint), so a run started in one stack continues in the other.

Backend contract (both classes implement it):
    Backend(model_config, train_config, total_steps, init_tensors=None)
    .framework: str; .step: int (updates applied)
    .train_step(batch) -> {"loss", "grad_norm", "lr"}     one update
    .eval_batch(batch) -> (sum of token nll, token count)  dropout off, no label smoothing
    .decode(src (B, S), max_new_tokens, num_beams=1) -> ids (B, T_out)   greedy, or beam search
    .model_tensors() / .optimizer_state() / .rng_state()  neutral formats (torch layout)
    .restore(tensors, optimizer_state, rng or None)
    .lora: None, or the LoRAConfig of a backend that trains adapters only (shared/training/finetune.py);
           then tensors and optimizer state are the adapter's, keyed by PEFT adapter keys
Sharded backends (jax_impl/sharding.py, torch_impl/distributed.py; shared/training/sharding.py) also have
    .is_main_process: bool   only that process writes checkpoints, metrics and plots
    .any_process(flag) -> bool   one time-budget decision for all processes
and return gathered, full tensors from the state methods (every process calls them).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shared.checkpoints.checkpoint import CheckpointError, load_checkpoint
from shared.config.model_config import ConfigError, ModelConfig
from shared.checkpoints.init import initial_tensors
from shared.training.interrupts import StopRequest, stop_on_signals
from shared.data import BatchSampler, load_corpus, train_tokenizer
from shared.data.batching import truncate
from shared.data.model_tokenizer import has_model_tokenizer, load_model_tokenizer, uses_t5_tokenizer
from shared.data.t5_tokenizer import T5Tokenizer, train_t5_tokenizer
from shared.data.tokenizer import Tokenizer
from shared.decoding.batching import length_buckets, pad_sources
from shared.decoding.generation import GenerationConfig
from shared.families import family_of
from shared.training.metrics import corpus_bleu, perplexity, rouge
from shared.training.metrics_log import LOSS_PLOT_FILE, METRICS_FILE, MetricsLog, Throughput, plot_loss_curves
from shared.checkpoints.paths import TRAIN_CONFIG_FILE, checkpoint_root, is_run_dir
from shared.training.run_checkpoint import load_run_checkpoint, save_run_checkpoint
from shared.training.sharding import NullMetricsLog
from shared.training.train_config import TrainConfig

TRAINER_FORMAT = "twinformer-train-v1"
# The trainer_state.json entries this loop writes itself (plus "step", added by save_run_checkpoint).
LOOP_STATE_KEYS = ("format", "framework", "sampler", "total_steps", "schedule_step", "tokens_seen", "step")
EVAL_SPLIT = "val"
VAL_METRICS = {"loss": "val_loss", "ppl": "val_ppl", "tokens": "val_tokens"}  # bleu keeps its name
SUMMARY_CORPORA = ("tweetsum",)  # scored with ROUGE-1/2/L; the others (translation) with BLEU


# (framework, model_config, train_config, total_steps, init_tensors or None) -> a fresh backend
# (twinformer/backends.py make_backend, the sharded factories, or a test's own)
BackendFactory = Callable[[str, ModelConfig, TrainConfig, int, "dict[str, np.ndarray] | None"], Any]


def as_float(value: Any) -> float:
    """A backend metric (python number, numpy/jax scalar or torch tensor) as a float."""
    return float(value.item()) if hasattr(value, "item") else float(value)


# ---------------------------------------------------------------------------------------------------
def load_pairs(config: TrainConfig, split: str) -> list[tuple[str, str]]:
    """Translation pairs; for a decoder-only model ("", text) per text (the model reads the target side)."""
    if family_of(config.base_model_config()).decoder_only:
        from shared.data.text_lines import load_lm_texts

        return [("", text) for text in load_lm_texts(config.corpus, split, config.data_dir, config.tgt_lang)]
    return load_corpus(config.corpus, split, config.src_lang, config.tgt_lang, config.data_dir)


def make_tokenizer(config: TrainConfig, train_pairs: list[tuple[str, str]]) -> Tokenizer | T5Tokenizer:
    """The run's tokenizer: the init checkpoint's when it has one, else one trained on the train split
    (the family's tokenizer rule: the project's BPE, or a T5-style Unigram)."""
    model_config = config.base_model_config()
    if config.init_checkpoint and has_model_tokenizer(config.init_checkpoint, model_config):
        return load_model_tokenizer(config.init_checkpoint, model_config)
    if uses_t5_tokenizer(model_config):
        return train_t5_tokenizer([text for pair in train_pairs for text in pair], config.vocab_size)
    return train_tokenizer(train_pairs, config.vocab_size, joint=config.joint_vocab)


def make_sampler(config: TrainConfig, tokenizer: Tokenizer | T5Tokenizer, pairs: list[tuple[str, str]], shuffle: bool = True) -> BatchSampler:
    return BatchSampler(
        tokenizer.encode_pairs(pairs),
        max_tokens=config.max_tokens,
        batch_size=config.batch_size,
        max_len=config.max_len,
        pad_to_multiple=config.pad_to_multiple,
        seed=config.seed,
        shuffle=shuffle,
        ids=tokenizer.sequence_ids,
    )


def resolve_total_steps(config: TrainConfig, sampler: BatchSampler) -> int:
    """total_steps, or the number of batches in `epochs` epochs (each epoch's plan is deterministic)."""
    if config.total_steps is not None:
        return config.total_steps
    return sum(len(sampler.plan(epoch)) for epoch in range(config.epochs))


def init_weights(config: TrainConfig, model_config: ModelConfig) -> dict[str, np.ndarray]:
    """The init_checkpoint's tensors (checked against the run's model config), or the shared init.

    Never a framework's own default init: the same config and seed start the same run in either stack.
    """
    if not config.init_checkpoint:
        return initial_tensors(model_config, config.seed)
    init_config, tensors = load_checkpoint(config.init_checkpoint)
    if init_config != model_config:
        diffs = [
            f"{name}: checkpoint {getattr(init_config, name)!r}, run {getattr(model_config, name)!r}"
            for name in model_config.to_dict()
            if getattr(init_config, name) != getattr(model_config, name)
        ]
        raise CheckpointError(
            f"init_checkpoint {config.init_checkpoint} holds a different model:\n  - " + "\n  - ".join(diffs)
        )
    return tensors


# ---------------------------------------------------------------------------------------------------
def evaluate(
    backend,
    tokenizer: Tokenizer,
    pairs: list[tuple[str, str]],
    config: TrainConfig,
    bleu_sentences: int | None = None,
    num_beams: int = 1,
    progress: bool = False,
    speed: bool = False,
) -> dict[str, float]:
    """Loss (mean nll per target token, no smoothing), perplexity, and BLEU (ROUGE-1/2/L for a
    summarisation corpus) of the first `bleu_sentences` greedy decodes (beam search with num_beams > 1)
    on `pairs`: {"loss", "ppl", "tokens"[, "bleu", "bleu_sentences" | "rouge1", ..., "rouge_texts"]}.

    The names say nothing of the split: the training loop logs them as val_* (VAL_METRICS), the
    evaluate command beside the split it scored. progress: a bar over the batches and decodes.
    speed: also the loss pass's target tokens/s, with and without its new-shape (compile) batches
    (shared.training.metrics_log.Throughput): "tokens_per_s", "tokens_per_s_steady", "new_shape_s", "batch_shapes".
    """
    from tqdm import tqdm

    GenerationConfig(num_beams=num_beams)  # a bad num_beams fails before any work
    sampler = make_sampler(config, tokenizer, pairs, shuffle=False)
    total_nll, total_tokens = 0.0, 0
    meter = Throughput()
    for batch in tqdm(sampler, desc="loss", disable=not progress, leave=False, dynamic_ncols=True):
        nll, count = meter.step(batch_shape(batch), batch.num_tokens, lambda: backend.eval_batch(batch))
        total_nll, total_tokens = total_nll + nll, total_tokens + count
    result = {"loss": total_nll / total_tokens, "ppl": perplexity(total_nll, total_tokens), "tokens": total_tokens}
    if speed:  # eval_batch returns host numbers: every step has finished when the pass ends
        meter.report()
        result.update(meter.run_report())
    n = config.bleu_sentences if bleu_sentences is None else bleu_sentences
    if n > 0:
        chosen = pairs[:n]
        hypotheses = translate(backend, tokenizer, [s for s, _ in chosen], config, num_beams, progress=progress)
        references = [t for _, t in chosen]
        if config.corpus in SUMMARY_CORPORA:
            result.update(rouge(hypotheses, references), rouge_texts=len(chosen))
        else:
            result.update(bleu=corpus_bleu(hypotheses, references), bleu_sentences=len(chosen))
    return result


def batch_shape(batch) -> tuple[tuple[int, ...], ...]:
    """What a jitted step specialises on: the batch's array shapes, (B, S) and (B, T)."""
    return (batch.src.shape, batch.tgt_in.shape)


def as_val_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """evaluate()'s names as the training loop logs them for the validation split (metrics.jsonl)."""
    return {VAL_METRICS.get(key, key): value for key, value in metrics.items()}


def translate(
    backend, tokenizer: Tokenizer, sources: list[str], config: TrainConfig, num_beams: int = 1, progress: bool = False
) -> list[str]:
    """Greedy (or num_beams-beam search) translations, batched by source length (fixed batch rows:
    one jit shape per length). progress: a bar over the sentences."""
    from tqdm import tqdm

    GenerationConfig(num_beams=num_beams)  # a bad num_beams fails before any decoding
    special = tokenizer.sequence_ids
    encoded = [truncate((tokenizer.encode_source(s), [special.start, special.end]), config.max_len, special.end)[0]
               for s in sources]  # fmt: skip
    rows = config.batch_size or max(1, config.max_tokens // config.max_len)
    out: list[str] = [""] * len(sources)
    with tqdm(total=len(sources), desc="decode", unit="sent", disable=not progress, leave=False, dynamic_ncols=True) as bar:
        for bucket in length_buckets([len(e) for e in encoded], rows):
            src = pad_sources([encoded[i] for i in bucket], special.pad, config.pad_to_multiple, config.max_len, rows=rows)
            ids = backend.decode(src, config.max_decode_len, num_beams)  # (rows, T_out)
            for row, index in enumerate(bucket):
                out[index] = tokenizer.decode_target(ids[row])
            bar.update(len(bucket))
    return out


# ---------------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path | None  # the last checkpoint written
    step: int
    losses: list[float] = field(default_factory=list)  # one per update made in this call
    evals: list[dict[str, Any]] = field(default_factory=list)
    backend: Any = None
    stopped_by: StopRequest = field(default_factory=StopRequest)  # set when SIGINT/SIGTERM stopped the run
    throughput: dict[str, Any] = field(default_factory=dict)  # this call's training tokens/s (Throughput.run_report)
    eval_failures: list[dict[str, Any]] = field(default_factory=list)  # evaluations that raised (eval_failure)

    def summary(self, framework: str) -> dict[str, Any]:
        """The one-line JSON the `train` and `finetune` commands print: where, how far, losses, last eval."""
        return {
            "framework": framework,
            "run_dir": str(self.run_dir),
            "step": self.step,
            "checkpoint": str(self.checkpoint),
            "first_loss": self.losses[0] if self.losses else None,
            "last_loss": self.losses[-1] if self.losses else None,
            # The last evaluation's metrics when it scored this step (not one an evaluation failure followed).
            **({k: v for k, v in self.evals[-1].items() if k not in ("kind", "step")}
               if self.evals and self.evals[-1]["step"] == self.step else {}),
            **{f"train_{k}": v for k, v in self.throughput.items() if k.startswith("tokens_per_s")},
            **({"eval_failed": self.eval_failures[-1]} if self.eval_failures else {}),
        }


def eval_failure(step: int, error: Exception) -> dict[str, Any]:
    """The metrics.jsonl record of an evaluation that raised: where, and the error in one line."""
    message = " ".join(str(error).split())
    return {"kind": "eval_failed", "step": step, "error": f"{type(error).__name__}: {message}"}


class RunDirError(ConfigError):
    """A run directory that already holds another run (its checkpoints and metrics would mix)."""


RUN_FILES = (METRICS_FILE, LOSS_PLOT_FILE, TRAIN_CONFIG_FILE)  # what a run writes beside checkpoints/


def check_run_dir(run_dir: Path, resumed: Path | None, overwrite: bool) -> None:
    """Refuse to start a run in a directory holding another one, unless overwrite (then clear it).

    Another run: any checkpoint or metrics.jsonl, when this call resumes nothing or resumes a
    checkpoint from elsewhere. Restarting at step 0 there would leave the old checkpoints beside
    the new ones (`average` would mix them) and duplicate steps in metrics.jsonl.
    """
    holds_run = is_run_dir(run_dir) or (run_dir / METRICS_FILE).is_file()
    if not holds_run:
        return
    own = resumed is not None and resumed.resolve().parent == checkpoint_root(run_dir).resolve()
    if own:
        return
    if overwrite:
        shutil.rmtree(checkpoint_root(run_dir), ignore_errors=True)
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
        return
    what = "a resumed checkpoint from elsewhere" if resumed is not None else "a new run"
    raise RunDirError(
        f"{run_dir} already holds a run (checkpoints or {METRICS_FILE}); {what} there would mix with it. "
        f"Continue that run with --resume {run_dir}, choose another --run-dir, or start over with "
        "--overwrite (deletes its checkpoints and metrics)"
    )


def train(
    config: TrainConfig | None,
    framework: str,
    run_dir: str | Path,
    *,
    resume: str | Path | None = None,
    total_steps: int | None = None,
    stop_at: int | None = None,
    time_budget_s: float | None = None,
    progress: bool = True,
    backend_factory: BackendFactory,
    extra_trainer_state: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train (or resume) a run; checkpoints, metrics.jsonl and loss.png go to run_dir.

    resume: a run directory or checkpoint; its train config is used unless `config` is given.
    total_steps: overrides the config's total_steps/epochs. stop_at: stop (and save) at this step,
    as an interruption would, without changing the schedule. time_budget_s: stop at the first step
    boundary after this many seconds of training, then evaluate and save as at the end (the
    schedule is not shortened: use a schedule that needs no end, e.g. inverse_sqrt).
    backend_factory: builds the backend of `framework` (BackendFactory; the CLI's is
    twinformer/backends.py make_backend, fine-tuning wraps its own, shared/training/finetune.py);
    extra_trainer_state: merged into every checkpoint's trainer_state.json.
    overwrite: a run_dir that already holds another run is refused (RunDirError) unless this is
    set; then that run's checkpoints and metrics are deleted first (check_run_dir).
    SIGINT / SIGTERM stop the run after the current step and save (result.stopped_by says which).
    """
    run_dir = Path(run_dir)
    checkpoint = load_run_checkpoint(resume) if resume is not None else None
    check_run_dir(run_dir, None if checkpoint is None else checkpoint.path, overwrite)
    if config is None:
        if checkpoint is None:
            raise ConfigError("give a train config, or a checkpoint to resume")
        config = checkpoint.train_config
    if total_steps is not None:
        config = config.replace(total_steps=total_steps, epochs=None)

    train_pairs = load_pairs(config, "train")
    if checkpoint is not None:
        tokenizer, model_config = checkpoint.tokenizer(), checkpoint.model_config
    else:
        tokenizer = make_tokenizer(config, train_pairs)
        model_config = config.resolve_model_config(tokenizer.src_vocab_size, tokenizer.tgt_vocab_size)
    sampler = make_sampler(config, tokenizer, train_pairs)
    steps = resolve_total_steps(config, sampler)
    backend = backend_factory(
        framework, model_config, config, steps, None if checkpoint is not None else init_weights(config, model_config)
    )
    lora = getattr(backend, "lora", None)
    if checkpoint is not None and (checkpoint.lora is None) != (lora is None):
        saved, wanted = ("a LoRA adapter", "full weights") if lora is None else ("full weights", "a LoRA adapter")
        raise ConfigError(
            f"{checkpoint.path} holds {saved} but this run trains {wanted}; resume LoRA runs with "
            "`twinformer finetune --resume`, full-weight runs with `train --resume` or `finetune --resume`"
        )
    # Sharded runs (shared/training/sharding.py): every process trains, only the main one writes files.
    writes = getattr(backend, "is_main_process", True)
    log = MetricsLog(run_dir / METRICS_FILE) if writes else NullMetricsLog()
    tokens_seen = 0
    # Entries other code put in the checkpoint's trainer state (e.g. fine-tuning's record of its
    # base) survive a resume by any command; this call's own entries win.
    carried = {} if checkpoint is None else {k: v for k, v in checkpoint.trainer_state.items() if k not in LOOP_STATE_KEYS}
    extra_trainer_state = {**carried, **(extra_trainer_state or {})}
    if checkpoint is not None:
        backend.restore(checkpoint.tensors, checkpoint.optimizer, checkpoint.rng)
        sampler.load_state_dict(checkpoint.trainer_state["sampler"])
        tokens_seen = int(checkpoint.trainer_state.get("tokens_seen", 0))
        log.truncate_after(backend.step)
    if writes:
        run_dir.mkdir(parents=True, exist_ok=True)
        config.save(run_dir / "train_config.json")

    val_pairs = load_pairs(config, EVAL_SPLIT)
    result = TrainResult(run_dir=run_dir, checkpoint=None, step=backend.step, backend=backend)
    end = steps if stop_at is None else min(stop_at, steps)

    def save() -> None:
        trainer_state = {
            "format": TRAINER_FORMAT,
            "framework": framework,
            "sampler": sampler.state_dict(),
            "total_steps": steps,
            "schedule_step": backend.step,  # the 0-based index of the next update's learning rate
            "tokens_seen": tokens_seen,
            **extra_trainer_state,
        }
        # Every process gathers (collectives in sharded backends); only the main one writes.
        tensors, optimizer, rng = backend.model_tensors(), backend.optimizer_state(), backend.rng_state()
        if not writes:
            return
        result.checkpoint = save_run_checkpoint(
            run_dir,
            step=backend.step,
            model_config=model_config,
            tensors=tensors,
            optimizer=optimizer,
            rng=rng,
            trainer_state=trainer_state,
            train_config=config,
            tokenizer=tokenizer,
            keep_last=config.keep_last,
            lora=lora,
        )

    def run_eval() -> None:
        """Evaluate and log; a failure is logged and reported, never raised: the run keeps its steps
        and its checkpoints (the final checkpoint is written before the final evaluation)."""
        started_eval = time.perf_counter()
        try:
            metrics = evaluate(backend, tokenizer, val_pairs, config)
        except Exception as error:  # noqa: BLE001 (any evaluation bug: report it, keep training)
            record = eval_failure(backend.step, error)
            result.eval_failures.append(record)
            if writes:
                print(f"warning: evaluation at step {backend.step} failed ({record['error']}); "
                      "training goes on, checkpoints are kept", file=sys.stderr, flush=True)
        else:
            record = {"kind": "eval", "step": backend.step, **as_val_metrics(metrics)}
            result.evals.append(record)
        log.write(record)
        # The bar's rate (and so its ETA) and the logged tokens/s are of training steps: leave the
        # evaluation's time out of them.
        bar.unpause()
        meter.exclude(time.perf_counter() - started_eval)

    from tqdm import tqdm

    bar = tqdm(total=end, initial=backend.step, disable=not (progress and writes), desc=f"train[{framework}]", dynamic_ncols=True)
    stream = sampler.stream()
    # Metrics stay device values until a log line needs them: reading one (`.item()`, float()) waits
    # for the device, and a wait every step stalls the GPU queue on small models.
    window: list[tuple[Any, Any, int]] = []  # (loss, grad_norm, target tokens) per update since the last log
    meter = Throughput()  # tokens/s with and without the steps that met a new batch shape (compiles)
    started = time.perf_counter()
    out_of_time = False
    any_process = getattr(backend, "any_process", lambda flag: flag)  # one stop decision for all processes
    last_lr = 0.0

    def flush_window(step: int) -> None:
        nonlocal window
        if not window:
            return
        losses = [as_float(loss) for loss, _, _ in window]  # reading them back waits for the steps
        norms = [as_float(norm) for _, norm, _ in window]
        result.losses.extend(losses)
        record = {
            "kind": "train",
            "step": step,
            "loss": float(np.mean(losses)),
            "grad_norm": float(np.mean(norms)),
            "lr": last_lr,
            **meter.report(),  # tokens, tokens_per_s (compiles included), tokens_per_s_steady, ...
            "tokens_seen": tokens_seen,
            "epoch": sampler.epoch,
        }
        log.write(record)
        bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:.0f}")
        window = []

    # Ctrl-C / SIGTERM: finish the step, save as a --max-minutes stop does (without its evaluation,
    # so the checkpoint is on disk at once), leave the exit status to the command. A second signal
    # aborts wherever the run is (saves are atomic). Sharded runs make each stop decision together
    # (any_process), so no rank waits in a collective for one that has left the loop.
    interrupted = False
    with stop_on_signals() as stop:
        while backend.step < end:
            if any_process(stop.requested):
                interrupted = True
                break
            if time_budget_s is not None and any_process(time.perf_counter() - started > time_budget_s):
                out_of_time = True
                break
            batch = next(stream)
            metrics = meter.step(batch_shape(batch), batch.num_tokens, lambda: backend.train_step(batch))
            tokens_seen += batch.num_tokens
            last_lr = as_float(metrics["lr"])  # a host number in both backends (shared.training.schedules)
            window.append((metrics["loss"], metrics["grad_norm"], batch.num_tokens))
            step = backend.step
            bar.update(1)
            if step % config.log_every == 0 or step == end:
                flush_window(step)
            # Save before evaluating: the checkpoint is on disk whatever the evaluation does.
            if config.save_every and step % config.save_every == 0 and step != end:
                save()
            if config.eval_every and step % config.eval_every == 0 and step != steps:
                run_eval()
        flush_window(backend.step)  # a time-budget or signal stop between log steps
        bar.close()
        save()
        if (backend.step >= steps or out_of_time) and not interrupted:
            run_eval()
    if writes:
        plot_loss_curves(run_dir / METRICS_FILE, run_dir / LOSS_PLOT_FILE, title=f"{config.corpus} ({framework})")
    result.step = backend.step
    result.throughput = meter.run_report()
    if interrupted:
        result.stopped_by = stop
    return result
