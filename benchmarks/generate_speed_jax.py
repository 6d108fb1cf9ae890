"""Generation speed of jax_impl.generate against transformers' generate, one CPU thread.

    python -m benchmarks.generate_speed_jax              # GPT-2 124M greedy + flan-t5-base beam 4
    python -m benchmarks.generate_speed_jax --tiny       # tiny shapes: a smoke run (tests/)

GPT-2 (124M shape: d 768, 12 layers, 12 heads, vocab 50257; random weights, noised so logits are
peaked and no near-tie decides a token), batch 1, a 32-token prompt, 128 new greedy tokens:
tokens/s of jax_impl (KV cache, one jitted while_loop) and of transformers' generate with its
cache and without (use_cache=False), in one process, the three interleaved round by round (a
shared CPU slows each alike); the tokens must be identical (asserted). flan-t5-base shape (random
weights), beam search with 4 beams: jax_impl cached vs uncached (use_cache=False re-runs the
prefix), same tokens asserted. Compile time is excluded (one untimed call first) and reported.
Threads: twinformer/threads.py's one thread for both stacks (XLA's Eigen threads off).
The merger combines this with torch's twin into benchmarks/generate_speed.py.
"""

from __future__ import annotations

import argparse
import json
import time

from twinformer.threads import apply_threads


def _timed(call):
    start = time.perf_counter()
    out = call()
    return out, time.perf_counter() - start


def gpt2_figures(args) -> dict:
    import numpy as np
    import torch
    import transformers

    import jax_impl
    from jax_impl.generate import generate
    from shared.config import ModelConfig
    from shared.families import family_of
    from shared.generation import GenerationConfig
    from shared.hf_checkpoint import tensors_from_hf

    sizes = dict(d_model=64, num_heads=4, d_ff=256, num_decoder_layers=2, max_len=256) if args.tiny else {}
    config = ModelConfig.from_preset("gpt2", **sizes)
    hf_config = dict(family_of(config).hf.config_to_hf(config))
    hf_config.pop("architectures"), hf_config.pop("model_type")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**hf_config)).eval()
    with torch.no_grad():
        for parameter in hf.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape))  # peaked logits: no near-ties
    tensors = tensors_from_hf(family_of(config), config, {k: v.numpy() for k, v in hf.state_dict().items()}, "HF GPT-2")
    model, params = jax_impl.build_model(config), jax_impl.params_from_state_dict(config, tensors)
    prompt = np.random.default_rng(0).integers(0, config.tgt_vocab_size, (1, args.prompt))
    N = args.new_tokens
    ours_config = GenerationConfig(max_new_tokens=N, eos_token_id=())  # never stops: N tokens each

    def ours():
        return generate(model, params, prompt, None, ours_config)

    def hf_generate(use_cache: bool):
        with torch.no_grad():
            out = hf.generate(torch.as_tensor(prompt), attention_mask=torch.ones(prompt.shape, dtype=torch.long),
                              max_new_tokens=N, min_new_tokens=N, do_sample=False, eos_token_id=None,
                              pad_token_id=config.pad_id, use_cache=use_cache)
        return out[:, prompt.shape[1]:].numpy()

    _, compile_s = _timed(ours)
    seconds = {"jax": 0.0, "hf_cached": 0.0, "hf_uncached": 0.0}
    for _ in range(args.rounds):
        tokens, t = _timed(ours)
        seconds["jax"] += t
        cached, t = _timed(lambda: hf_generate(True))
        seconds["hf_cached"] += t
        uncached, t = _timed(lambda: hf_generate(False))
        seconds["hf_uncached"] += t
        assert np.array_equal(tokens, cached) and np.array_equal(tokens, uncached), "tokens differ from transformers'"
    rate = {name: args.rounds * N / s for name, s in seconds.items()}
    return {"gpt2_tokens_per_s": rate, "gpt2_jax_compile_s": compile_s,
            "gpt2_jax_over_hf_cached": rate["jax"] / rate["hf_cached"],
            "gpt2_jax_over_hf_uncached": rate["jax"] / rate["hf_uncached"]}


def t5_figures(args) -> dict:
    import numpy as np

    import jax_impl
    from jax_impl.generate import generate
    from shared.config import ModelConfig
    from shared.generation import GenerationConfig
    from shared.init import initial_tensors

    sizes = dict(d_model=32, num_heads=2, d_ff=64, num_encoder_layers=2, num_decoder_layers=2) if args.tiny else {}
    config = ModelConfig.from_preset("flan-t5-base", **sizes)
    params = jax_impl.params_from_state_dict(config, initial_tensors(config, 0))
    model = jax_impl.build_model(config)
    src = np.random.default_rng(0).integers(2, config.src_vocab_size, (1, args.t5_source))
    beam = GenerationConfig(max_new_tokens=args.t5_new_tokens, num_beams=4, eos_token_id=())
    compile_s = {}
    for use_cache in (True, False):
        _, compile_s[use_cache] = _timed(lambda: generate(model, params, src, config=beam.replace(use_cache=use_cache)))
    seconds = {True: 0.0, False: 0.0}
    for _ in range(args.rounds):
        outs = {}
        for use_cache in (True, False):
            outs[use_cache], t = _timed(lambda: generate(model, params, src, config=beam.replace(use_cache=use_cache)))
            seconds[use_cache] += t
        assert np.array_equal(outs[True], outs[False]), "cached beam search gave other tokens"
    return {"t5_beam4_cached_s": seconds[True] / args.rounds, "t5_beam4_uncached_s": seconds[False] / args.rounds,
            "t5_beam4_speedup": seconds[False] / seconds[True],
            "t5_compile_s": {"cached": compile_s[True], "uncached": compile_s[False]}}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens (GPT-2)")
    parser.add_argument("--new-tokens", type=int, default=128, help="new greedy tokens (GPT-2)")
    parser.add_argument("--t5-source", type=int, default=64, help="source tokens (flan-t5-base)")
    parser.add_argument("--t5-new-tokens", type=int, default=32, help="new tokens of the beam search")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds")
    parser.add_argument("--skip", choices=("gpt2", "t5"), action="append", default=[])
    parser.add_argument("--tiny", action="store_true", help="tiny shapes (a smoke run)")
    args = parser.parse_args(argv)
    figures = {}
    if "gpt2" not in args.skip:
        figures.update(gpt2_figures(args))
    if "t5" not in args.skip:
        figures.update(t5_figures(args))
    print(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    apply_threads(1)  # before torch / jax are imported (a test calling main keeps its own threads)
    main()
