"""Training throughput of torch_impl, jax_impl and a torch.nn.Transformer reference, in one run.

Each stack runs full training steps (forward, masked cross-entropy, backward, Adam update) on the
same synthetic batch. Reported per stack: target tokens/s, model TFLOP/s (matmul FLOPs counted
analytically, see `forward_matmul_flops`), the ratio to the nn.Transformer reference measured in this
run, and the ratio to this machine's measured matmul peak (benchmarks/matmul_peak.py) for the same
framework, device and dtype. Timings are reported, never asserted.

python -m benchmarks.train_throughput [--device cpu|gpu] [--dtype float32|bfloat16] [--batch 128
    --src-len 24 --tgt-len 24 --steps N --warmup W] [--preset book-ch4] [--torch-compile] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from shared.config.model_config import ModelConfig

STACKS = ("torch_impl", "jax_impl", "reference")
REFERENCE = "reference"  # the book's model B on torch.nn.Transformer, the denominator of vs_reference
BOS_ID, EOS_ID, FIRST_WORD_ID = 1, 2, 4  # special ids of shared/data/special_tokens.py (PAD = config.pad_id)
# The book's chapter-4 Adam (BOOK_MODELS.md): lr 1e-3, betas (0.9, 0.98), eps 1e-9.
ADAM = {"lr": 1e-3, "betas": (0.9, 0.98), "eps": 1e-9}


# -- workload --------------------------------------------------------------------------------------
def synthetic_batch(config: ModelConfig, batch: int, src_len: int, tgt_len: int, seed: int = 0) -> dict:
    """Random sentence pairs, padded: src (B, S), tgt_in (B, T) = BOS + words, tgt_out (B, T) = words + EOS.

    Each sentence's length is drawn from [L/2, L], so about a quarter of the positions are padding,
    as in a length-bucketed batch of real sentences.
    """
    if min(batch, src_len, tgt_len) < 1:
        raise ValueError(f"batch, src_len and tgt_len must be >= 1, got {batch}, {src_len}, {tgt_len}")
    rng = np.random.default_rng(seed)
    pad = config.pad_id
    src = np.full((batch, src_len), pad, np.int32)
    tgt_in = np.full((batch, tgt_len), pad, np.int32)
    tgt_out = np.full((batch, tgt_len), pad, np.int32)
    for row in range(batch):
        s = rng.integers(max(1, src_len // 2), src_len + 1)
        src[row, :s] = rng.integers(FIRST_WORD_ID, config.src_vocab_size, s)
        t = rng.integers(max(1, tgt_len // 2), tgt_len + 1)  # words + 1 special token
        words = rng.integers(FIRST_WORD_ID, config.tgt_vocab_size, t - 1)
        tgt_in[row, :t] = np.concatenate([[BOS_ID], words])
        tgt_out[row, :t] = np.concatenate([words, [EOS_ID]])
    return {"src": src, "tgt_in": tgt_in, "tgt_out": tgt_out}


def forward_matmul_flops(config: ModelConfig, batch: int, src_len: int, tgt_len: int) -> dict[str, int]:
    """Matmul FLOPs (2 per multiply-add) of one forward pass, by part, on the padded shapes.

    Per token a (D_in -> D_out) projection costs 2 * D_in * D_out; attention of Lq queries over Lk
    keys costs 2 * Lq * Lk * D for the scores (Q K^T over H heads of size K, H * K = D) and as much
    again for the context (probs @ V). Embedding lookups, norms, softmax and the loss are not matmuls
    and are left out, so this is the work a perfect GEMM engine would do.
    """
    B, S, T = batch, src_len, tgt_len
    D, F, V = config.d_model, config.d_ff, config.tgt_vocab_size
    Le, Ld = config.num_encoder_layers, config.num_decoder_layers
    return {
        "encoder_qkvo_projections": Le * 2 * B * S * 4 * D * D,
        "encoder_attention": Le * 2 * (2 * B * S * S * D),  # scores + context
        "encoder_ffn": Le * 2 * B * S * 2 * D * F,
        "decoder_self_qkvo_projections": Ld * 2 * B * T * 4 * D * D,
        "decoder_self_attention": Ld * 2 * (2 * B * T * T * D),
        # cross-attention: q and out projections on target tokens, k and v on source tokens
        "decoder_cross_projections": Ld * 2 * (2 * B * T * D * D + 2 * B * S * D * D),
        "decoder_cross_attention": Ld * 2 * (2 * B * T * S * D),
        "decoder_ffn": Ld * 2 * B * T * 2 * D * F,
        "output_projection": 2 * B * T * D * V,
    }


def training_matmul_flops(config: ModelConfig, batch: int, src_len: int, tgt_len: int) -> int:
    """Forward x 3: the backward pass does two matmuls (input and weight gradients) per forward one."""
    return 3 * sum(forward_matmul_flops(config, batch, src_len, tgt_len).values())


def measure(runners: dict[str, tuple[Callable, Callable]], warmup: int, steps: int, rounds: int) -> dict:
    """Warm every stack up (compilation), then time `rounds` rounds of `steps` steps of each in turn.

    A runner is (step, finish): step() launches one training step, finish(out) waits for the device
    and returns its loss as a float, so a step's time covers its whole computation. Interleaving the
    stacks in rounds spreads any load from other processes over all of them alike.
    """
    runs = {name: {"step_times_s": [], "losses": []} for name in runners}
    for name, (step, finish) in runners.items():
        runs[name]["losses"] += [finish(step()) for _ in range(warmup)]
    for _ in range(rounds):
        for name, (step, finish) in runners.items():
            for _ in range(steps):
                start = time.perf_counter()
                loss = finish(step())
                runs[name]["step_times_s"].append(time.perf_counter() - start)
                runs[name]["losses"].append(loss)
    return {name: {"step_times_s": run["step_times_s"], "first_loss": run["losses"][0],
                   "last_loss": run["losses"][-1]} for name, run in runs.items()}


# -- the three stacks ------------------------------------------------------------------------------
def torch_runner(model, batch: dict, args, compile_model: bool) -> tuple[Callable, Callable]:
    """(step, finish) of Adam training steps of a torch model (torch_impl.Transformer or the reference)."""
    import torch
    import torch.nn.functional as F

    from twinformer.devices import torch_device

    device = torch_device(args.device)
    model = model.to(device, getattr(torch, args.dtype)).train()
    pad = model.pad_id if hasattr(model, "pad_id") else model.config.pad_id
    src, tgt_in, tgt_out = (torch.from_numpy(batch[k]).long().to(device) for k in ("src", "tgt_in", "tgt_out"))
    # torch's CPU default is the for-loop Adam (a dozen small ops per tensor); foreach batches them
    # into multi-tensor kernels, fused does one kernel per step; the same update rule (equal up to rounding).
    impl = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[args.torch_adam]
    optimizer = torch.optim.Adam(model.parameters(), **ADAM, **impl)

    def loss_fn(src, tgt_in, tgt_out):
        logits = model(src, tgt_in)  # (B, T, V)
        # mean over non-pad target tokens; float32 loss whatever the model dtype
        return F.cross_entropy(logits.float().flatten(0, 1), tgt_out.flatten(), ignore_index=pad)

    if compile_model:
        loss_fn = torch.compile(loss_fn)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(src, tgt_in, tgt_out)
        loss.backward()
        optimizer.step()
        return loss

    def finish(loss):
        return loss.item()  # .item() waits for the device (and for nothing on CPU, which is eager)

    return step, finish


def jax_runner(config: ModelConfig, torch_state: dict, batch: dict, args) -> tuple[Callable, Callable]:
    """(step, finish) of a jitted pure train step (optax.adam, params and optimizer state donated)."""
    import jax
    import jax.numpy as jnp
    import optax

    import jax_impl
    from twinformer.devices import jax_device

    device = jax_device(args.device)
    model = jax_impl.Transformer(config, attention=args.attention)
    dtype = jnp.dtype(args.dtype)
    # The same initial weights as torch_impl, so the first losses of the two stacks can be compared.
    params = jax.tree.map(lambda p: jnp.asarray(p, dtype), jax_impl.params_from_state_dict(config, torch_state))
    params = jax.device_put(params, device)
    optimizer = optax.adam(ADAM["lr"], b1=ADAM["betas"][0], b2=ADAM["betas"][1], eps=ADAM["eps"])
    # Committed to the device like everything else: an uncommitted leaf (optax's step count) would
    # make the second call see different input shardings and compile the step a second time.
    opt_state = jax.device_put(optimizer.init(params), device)
    src, tgt_in, tgt_out = (jax.device_put(batch[k], device) for k in ("src", "tgt_in", "tgt_out"))
    use_dropout = max(config.dropout, config.attention_dropout, config.embedding_dropout) > 0

    def loss_fn(params, src, tgt_in, tgt_out, key):
        rngs = {"dropout": key} if use_dropout else {}
        logits = model.apply({"params": params}, src, tgt_in, deterministic=not use_dropout, rngs=rngs)
        nll = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), tgt_out)  # (B, T)
        mask = tgt_out != config.pad_id
        return jnp.sum(nll * mask) / jnp.sum(mask)

    def train_step(params, opt_state, key, src, tgt_in, tgt_out):
        key, dropout_key = jax.random.split(key)
        loss, grads = jax.value_and_grad(loss_fn)(params, src, tgt_in, tgt_out, dropout_key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, key, loss

    # Donated: XLA updates params, Adam moments and the key in place instead of copying them.
    train_step = jax.jit(train_step, donate_argnums=(0, 1, 2))
    state = {"params": params, "opt_state": opt_state, "key": jax.device_put(jax.random.key(0), device)}

    def step():
        state["params"], state["opt_state"], state["key"], loss = train_step(
            state["params"], state["opt_state"], state["key"], src, tgt_in, tgt_out
        )
        return loss

    def finish(loss):
        return float(loss.block_until_ready())

    return step, finish


# -- reporting -------------------------------------------------------------------------------------
def summarise(runs: dict[str, dict], flops: int, tokens: int, peaks: dict[str, float]) -> dict[str, dict]:
    """Median step time -> tokens/s, model TFLOP/s, and the ratios to the reference and the peak."""
    out = {}
    for name, run in runs.items():
        median = statistics.median(run["step_times_s"])
        peak = peaks["jax" if name == "jax_impl" else "torch"]
        out[name] = {**run, "median_step_s": median, "tokens_per_s": tokens / median,
                     "model_tflops": flops / median / 1e12, "matmul_peak_tflops": peak}
        out[name]["vs_matmul_peak"] = out[name]["model_tflops"] / peak
    if REFERENCE in out:
        for result in out.values():
            result["vs_reference"] = result["tokens_per_s"] / out[REFERENCE]["tokens_per_s"]
    return out


def format_table(results: dict[str, dict]) -> str:
    header = (f"{'stack':<12} {'step ms':>9} {'tokens/s':>10} {'TFLOP/s':>8} {'vs ref':>7} "
              f"{'peak TFLOP/s':>12} {'vs peak':>8} {'loss 1st->last':>16}")
    lines = [header, "-" * len(header)]
    for name, r in results.items():
        vs_ref = f"{r['vs_reference']:.2f}x" if "vs_reference" in r else "-"
        lines.append(
            f"{name:<12} {r['median_step_s'] * 1e3:>9.1f} {r['tokens_per_s']:>10.0f} {r['model_tflops']:>8.3f} "
            f"{vs_ref:>7} {r['matmul_peak_tflops']:>12.3f} {r['vs_matmul_peak']:>7.1%} "
            f"{r['first_loss']:>7.3f}->{r['last_loss']:<7.3f}"
        )
    return "\n".join(lines)


def machine_description(args) -> dict:
    import jax
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "cpu": _cpu_name(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "jax": jax.__version__, "jax_backend": jax.default_backend(),
            "xla_flags": os.environ.get("XLA_FLAGS", "")}
    if args.device == "gpu" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# -- command line ----------------------------------------------------------------------------------
def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """['d_model=32', 'bias=false'] -> {'d_model': 32, 'bias': False}; values are JSON, else strings."""
    overrides, problems = {}, []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            problems.append(f"--set expects KEY=VALUE, got {item!r}")
            continue
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    if problems:
        raise ValueError("\n".join(problems))
    return overrides


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--preset", default="book-ch4")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="ModelConfig overrides")
    parser.add_argument("--no-dropout", action="store_true", help="set every dropout rate to 0")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--src-len", type=int, default=24)
    parser.add_argument("--tgt-len", type=int, default=24)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per stack")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (jit / compile)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of --steps steps per stack, interleaved")
    parser.add_argument("--stacks", nargs="+", choices=STACKS, default=list(STACKS))
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="batch by tokens: rows = max_tokens // max(src_len, tgt_len) (overrides --batch)")
    parser.add_argument("--attention", choices=("math", "fused"), default="math",
                        help="attention kernel of torch_impl and jax_impl (fused: SDPA / jax.nn.dot_product_attention)")
    parser.add_argument("--precision", default=None,
                        help="train torch_impl and jax_impl through their training backends with this "
                             "TrainConfig precision (e.g. bf16-mixed, where the config has that field)")
    parser.add_argument("--peak-dtypes", nargs="*", default=["float32", "bfloat16"],
                        help="also measure the matmul peak in these dtypes (MFU against each)")
    parser.add_argument("--torch-compile", action="store_true", help="torch.compile torch_impl's loss")
    parser.add_argument("--compile-reference", action="store_true", help="torch.compile the reference too")
    parser.add_argument("--torch-adam", choices=("for-loop", "foreach", "fused"), default="for-loop",
                        help="torch.optim.Adam implementation, for both torch models (for-loop: CPU default)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--peak-sizes", type=int, nargs="+", default=None, help="GEMM sizes for the peak")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    return parser


def backend_runner(name: str, config: ModelConfig, torch_state: dict, batch: dict, args) -> tuple[Callable, Callable]:
    """(step, finish) of the project's own training backend (torch_impl/jax_impl training.py), driven by a
    TrainConfig: the path `twinformer train` runs, with --precision passed through."""
    import dataclasses as dc

    from shared.data.batching import Batch
    from shared.training.train_config import TrainConfig

    fields = {f.name for f in dc.fields(TrainConfig)}
    if "precision" not in fields:
        raise SystemExit("--precision needs a TrainConfig with a precision field (the bf16-mixed mode of "
                         "the issue 'Parity that holds on real models'); this checkout has none")
    train = TrainConfig(optimizer="adam", lr=ADAM["lr"], betas=ADAM["betas"], eps=ADAM["eps"], device=args.device,
                        attention=args.attention, torch_compile=args.torch_compile, precision=args.precision)
    tokens = int((batch["tgt_out"] != config.pad_id).sum())
    data = Batch(batch["src"], batch["tgt_in"], batch["tgt_out"], np.arange(len(batch["src"]), dtype=np.int32), tokens)
    if name == "torch_impl":
        from torch_impl.training import TorchBackend as Backend
    else:
        from jax_impl.training import JaxBackend as Backend
    backend = Backend(config, train, 1_000_000, torch_state)
    return (lambda: backend.train_step(data)["loss"]), (lambda loss: float(loss))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if min(args.steps, args.warmup, args.rounds) < 1:
        raise SystemExit("--steps, --warmup and --rounds must be >= 1 (the first step compiles)")
    overrides = parse_overrides(args.set)
    if args.no_dropout:
        overrides.update(dropout=0.0, attention_dropout=0.0, embedding_dropout=0.0)
    config = ModelConfig.from_preset(args.preset, **overrides)

    import torch

    import torch_impl
    from benchmarks.matmul_peak import jax_matmul_peak, torch_matmul_peak
    from benchmarks.reference_nn_transformer import ReferenceNNTransformer
    from twinformer.devices import pin_precision

    if args.threads:
        torch.set_num_threads(args.threads)
    pin_precision("float32" if args.dtype == "float32" else "bfloat16")
    # The book passes a float causal mask with boolean padding masks; torch warns about the mix.
    warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask and attn_mask")

    if args.max_tokens is not None:  # batching by tokens: as many rows as fit, padding included
        args.batch = max(1, args.max_tokens // max(args.src_len, args.tgt_len))
    batch = synthetic_batch(config, args.batch, args.src_len, args.tgt_len, args.seed)
    tokens = int((batch["tgt_out"] != config.pad_id).sum())
    flops = training_matmul_flops(config, args.batch, args.src_len, args.tgt_len)
    torch.manual_seed(args.seed)
    ours = torch_impl.Transformer(config, attention=args.attention)
    torch_state = torch_impl.state_dict_numpy(ours)

    runners = {}
    for name in args.stacks:
        if name != REFERENCE and args.precision is not None:
            runners[name] = backend_runner(name, config, torch_state, batch, args)
        elif name == "torch_impl":
            runners[name] = torch_runner(ours, batch, args, args.torch_compile)
        elif name == "jax_impl":
            runners[name] = jax_runner(config, torch_state, batch, args)
        else:
            runners[name] = torch_runner(ReferenceNNTransformer(config), batch, args, args.compile_reference)
    load_before = os.getloadavg()
    runs = measure(runners, args.warmup, args.steps, args.rounds)
    load_after = os.getloadavg()
    for run in runs.values():
        run["train_step"] = "local (benchmarks/train_throughput.py)"
    peaks, peaks_by_dtype = {}, {}
    for dtype in dict.fromkeys([args.dtype, *args.peak_dtypes]):  # the run's dtype first, each once
        measured = {}
        if any(name != "jax_impl" for name in runs):
            measured["torch"] = torch_matmul_peak(args.device, dtype, args.peak_sizes)["tflops"]
        if "jax_impl" in runs:
            measured["jax"] = jax_matmul_peak(args.device, dtype, args.peak_sizes)["tflops"]
        peaks_by_dtype[dtype] = measured
    peaks = peaks_by_dtype[args.dtype]
    results = summarise(runs, flops, tokens, peaks)
    for name, result in results.items():  # model FLOP utilisation against each measured peak
        framework = "jax" if name == "jax_impl" else "torch"
        result["mfu"] = {dtype: result["model_tflops"] / measured[framework] for dtype, measured in peaks_by_dtype.items()}

    report = {
        "machine": machine_description(args),
        "settings": {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()},
        "model": {"config": config.to_dict(), "parameters": sum(p.numel() for p in ours.parameters())},
        "workload": {"target_tokens_per_step": tokens, "target_positions_per_step": args.batch * args.tgt_len,
                     "source_tokens_per_step": int((batch["src"] != config.pad_id).sum())},
        "flops": {"forward_by_part": forward_matmul_flops(config, args.batch, args.src_len, args.tgt_len),
                  "training_per_step": flops},
        "matmul_peak_tflops": peaks,
        "matmul_peak_tflops_by_dtype": peaks_by_dtype,
        # 1-minute load averages around the timed steps: above the core count, other processes
        # shared the CPU and every number here is pessimistic (ratios less so: see measure()).
        "load_average": {"before": load_before[0], "after": load_after[0]},
        "results": results,
    }
    print(f"{config.d_model=} {config.num_heads=} {config.d_ff=} layers {config.num_encoder_layers}+"
          f"{config.num_decoder_layers} V={config.tgt_vocab_size}; batch {args.batch} x {args.src_len}/{args.tgt_len}, "
          f"{tokens} target tokens/step, {flops / 1e9:.1f} GFLOP/step (matmuls, training); "
          f"{args.device} {args.dtype}, torch threads {torch.get_num_threads()}")
    print(format_table(results))
    if max(load_before[0], load_after[0]) > (os.cpu_count() or 1):
        print(f"warning: load average {load_before[0]:.1f} -> {load_after[0]:.1f} on {os.cpu_count()} cores: "
              "other processes shared the CPU during timing")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
