"""How far apart the stacks are in a 16-bit forward pass of a preset (docs/ROUNDING.md figures).

    python -m parity_tests.measure_rounding --preset base [--dtype bfloat16|float16]

Prints how many module outputs are bit-identical between the stacks, the first record (in
first-call order) that differs, the logits' max |torch - jax|, and the worst |torch - jax| / bound
under shared/parity/tolerances.compare_stacks (each stack's own error measured by its float64 run on the
same rounded weights). CPU only; the weights are twinformer parity's (default init plus noise).
"""

from __future__ import annotations

import argparse

import jax
import ml_dtypes
import numpy as np
import torch

import jax_impl
import torch_impl
from jax_impl.intermediates import forward_with_intermediates
from shared.config.model_config import ModelConfig
from shared.parity.tolerances import compare_stacks
from torch_impl.intermediates import capture_intermediates
from torch_impl.numpy_bridge import to_numpy
from twinformer.parity_report import initial_tensors, random_inputs

DTYPES = {"bfloat16": np.dtype(ml_dtypes.bfloat16), "float16": np.dtype(np.float16)}


def records(config: ModelConfig, tensors: dict, src: np.ndarray, tgt: np.ndarray) -> tuple[dict, dict]:
    """{name[call]: output} of each stack for the same weights and ids."""
    model = torch_impl.from_numpy(config, tensors).eval()
    with torch.no_grad(), capture_intermediates(model) as captured:
        model(torch.as_tensor(src), torch.as_tensor(tgt))
    torch_out = {f"{n}[{i}]": to_numpy(o) for n, outs in captured.items() if n != "pos_encoding" for i, o in enumerate(outs)}
    params = jax_impl.params_from_state_dict(config, tensors)
    _, jax_records = jax.jit(forward_with_intermediates, static_argnums=0)(jax_impl.Transformer(config), params, src, tgt)
    return torch_out, {f"{n}[{i}]": np.asarray(o) for n, outs in jax_records.items() for i, o in enumerate(outs)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="base")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = ModelConfig.from_preset(args.preset)
    low = {k: v.astype(DTYPES[args.dtype]) for k, v in initial_tensors(config, args.seed).items()}
    src, tgt = random_inputs(config, batch=4, src_len=12, tgt_len=10, seed=args.seed)
    torch_low, jax_low = records(config, low, src, tgt)
    with jax.enable_x64():
        torch_f64, jax_f64 = records(config, {k: v.astype(np.float64) for k, v in low.items()}, src, tgt)
    same = [k for k in torch_low if np.array_equal(torch_low[k].view(np.int16), jax_low[k].view(np.int16))]
    first = next((k for k in torch_low if k not in same), None)
    ratios = {k: compare_stacks(torch_low[k], jax_low[k], torch_f64[k], jax_f64[k], args.dtype).ratio for k in torch_low}
    worst = max(ratios, key=ratios.get)
    logits = np.abs(torch_low["logits[0]"].astype(np.float64) - jax_low["logits[0]"].astype(np.float64)).max()
    print(f"{args.preset} {args.dtype}: {len(same)}/{len(torch_low)} module outputs bit-identical; first differing "
          f"record {first}; logits max |torch - jax| {logits:.3g}; worst |torch - jax| / bound {ratios[worst]:.3f} at {worst}")


if __name__ == "__main__":
    main()
