"""Per-step process CPU seconds of one stack's LoRA fine-tuning step on the recipe's first N TweetSum
batches, and for JAX the CPU seconds of lowering and compiling each new shape (AOT, then the step
reuses it). CPU seconds, not wall time: the figure to compare stacks on a machine others load too.

python -m benchmarks.finetune_step_cpu {torch,jax} BASE_DIR [--steps 10] [--pad-to-multiple N] [--data-dir DIR]
BASE_DIR: a T5 checkpoint with its tokenizer (benchmarks/finetune_speed.py builds one under --work).
Prints one JSON line per step.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence

from benchmarks.finetune_speed import RECIPE


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("framework", choices=("torch", "jax"))
    parser.add_argument("base")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--pad-to-multiple", type=int, default=None)
    parser.add_argument("--data-dir", default=os.environ.get("TWINFORMER_TWEETSUM_DIR"))
    args = parser.parse_args(argv)

    from shared.checkpoints.checkpoint import load_checkpoint
    from shared.data.batching import BatchSampler
    from shared.data.model_tokenizer import load_model_tokenizer
    from shared.data.tweetsum import load_tweetsum_pairs
    from shared.training.finetune import read_lora_config, read_train_config

    config, tensors = load_checkpoint(args.base)
    lora, train = read_lora_config(RECIPE), read_train_config(RECIPE)
    pad = args.pad_to_multiple or train.pad_to_multiple
    train = train.replace(model_preset=None, model=config, model_overrides={}, pad_to_multiple=pad, max_len=min(train.max_len, config.max_len))
    tokenizer = load_model_tokenizer(args.base, config)
    sampler = BatchSampler(tokenizer.encode_pairs(load_tweetsum_pairs("train", args.data_dir)), batch_size=train.batch_size,
                           max_tokens=train.max_tokens, max_len=train.max_len, pad_to_multiple=pad, seed=train.seed,
                           ids=tokenizer.sequence_ids)  # fmt: skip
    stream = sampler.stream()
    batches = [next(stream) for _ in range(args.steps)]
    if args.framework == "torch":
        from torch_impl.finetune import LoRATorchBackend as Backend
    else:
        import jax

        from jax_impl.finetune import LoRAJaxBackend as Backend
        from jax_impl.training import batch_arrays
    backend = Backend(config, train, args.steps, tensors, lora)
    seen: set = set()
    for i, batch in enumerate(batches):
        shape = (batch.src.shape, batch.tgt_in.shape)
        new, compile_cpu = shape not in seen, {}
        seen.add(shape)
        if args.framework == "jax" and new:  # lower and compile ahead, timed apart from the step
            rng = jax.random.fold_in(backend.dropout_key, backend.step)
            started = time.process_time()
            with backend._context():
                lowered = backend._train_step.lower(backend.adapters, backend.opt_state, backend.base_params, batch_arrays(batch), rng)
                lowered_at = time.process_time()
                lowered.compile()
            compile_cpu = {"lower_cpu_s": lowered_at - started, "compile_cpu_s": time.process_time() - lowered_at}
        cpu, wall = time.process_time(), time.perf_counter()
        loss = float(backend.train_step(batch)["loss"])  # reading the loss waits for the step
        print(json.dumps({"step": i, "S": shape[0][1], "T": shape[1][1], "new_shape": new, "tokens": batch.num_tokens,
                          "cpu_s": time.process_time() - cpu, "wall_s": time.perf_counter() - wall, "loss": loss,
                          **compile_cpu}), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
