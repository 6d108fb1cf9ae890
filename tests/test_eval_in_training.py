"""Evaluation inside training: decoding under FSDP2, and a failed evaluation never costs a checkpoint.

- `test_fsdp_run_decodes_at_evaluation`: a tiny FSDP2 run on 2 gloo ranks evaluates with greedy
  decoding (BLEU) at every step; before the fix the incremental decoder met DTensor shards and
  crashed ("mixed torch.Tensor and DTensor"). Rank 0 also checks the decoded ids equal those of a
  plain single-process model loaded from the run's final checkpoint.
- `test_failed_evaluation_keeps_the_checkpoints`: both stacks, a backend whose decoding raises; the
  run still makes every step, writes the final checkpoint (saved before the final evaluation),
  records each failure in metrics.jsonl and in the result, and the command summary says so.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest

from shared.checkpoints.paths import checkpoint_root
from shared.training.loop import train
from shared.training.metrics_log import METRICS_FILE, read_metrics
from shared.training.run_checkpoint import latest_checkpoint, list_checkpoints
from shared.training.train_config import TrainConfig
from twinformer.backends import make_backend

TINY = TrainConfig(
    model_overrides={"d_model": 16, "num_heads": 2, "d_ff": 32, "num_encoder_layers": 1, "num_decoder_layers": 1,
                     "dropout": 0.0, "attention_dropout": 0.0, "embedding_dropout": 0.0, "max_len": 16},
    vocab_size=48, batch_size=8, max_len=16, pad_to_multiple=16, total_steps=3, log_every=1,
    eval_every=2, save_every=2, keep_last=None, bleu_sentences=4, max_decode_len=6, device="cpu",
)  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fsdp_worker(rank: int, world: int, port: int, config_json: str, out: str) -> None:
    """One gloo rank (torch.multiprocessing.spawn passes the rank first); rank 0 writes OUT/result.json."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    import torch
    import torch.distributed as dist

    from torch_impl.checkpoint import load
    from torch_impl.distributed import make_distributed_backend_factory
    from torch_impl.training import decode_sources

    torch.set_num_threads(1)
    config = TrainConfig.from_json(config_json)
    try:
        result = train(config, "torch", Path(out) / "run", progress=False,
                       backend_factory=make_distributed_backend_factory("fsdp"))
        backend = result.backend
        sources = np.array([[5, 9, 7, 1, 0, 0], [11, 4, 1, 0, 0, 0]], dtype=np.int32)
        sharded_ids = backend.decode(sources, 6)  # every rank: the gather is a collective
        if rank == 0:
            plain = load(latest_checkpoint(Path(out) / "run"))
            plain_ids = decode_sources(plain, sources, 6)
            (Path(out) / "result.json").write_text(json.dumps({
                "evals": result.evals, "failures": result.eval_failures, "step": result.step,
                "same_ids": bool(np.array_equal(sharded_ids, plain_ids)), "ids": np.asarray(sharded_ids).tolist(),
            }))
    finally:
        dist.destroy_process_group()


def test_fsdp_run_decodes_at_evaluation(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_fsdp_worker, args=(2, _free_port(), TINY.to_json(), str(tmp_path)), nprocs=2, join=True)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["failures"] == [] and result["step"] == 3
    assert [e["step"] for e in result["evals"]] == [2, 3]  # eval_every=2, then the final evaluation
    assert all(e["bleu_sentences"] == 4 and 0.0 <= e["bleu"] <= 100.0 for e in result["evals"])
    assert result["same_ids"], result["ids"]  # the gathered plain model decodes as the checkpoint does


class _FailingDecode:
    """A backend whose decoding raises (as the FSDP2 crash did); everything else is the real backend's."""

    def __init__(self, backend) -> None:
        self._backend = backend

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def decode(self, *args, **kwargs):
        raise RuntimeError("planted decoding failure\nsecond line")


@pytest.mark.parametrize("framework", ["torch", "jax"])
def test_failed_evaluation_keeps_the_checkpoints(tmp_path, capsys, framework):
    run_dir = tmp_path / "run"
    result = train(TINY, framework, run_dir, progress=False,
                   backend_factory=lambda *args: _FailingDecode(make_backend(*args)))
    assert result.step == 3 and len(result.losses) == 3 and result.evals == []
    # The final checkpoint (step 3) is on disk although the final evaluation failed after it.
    assert [path.name for path in list_checkpoints(run_dir)] == ["step_0000002", "step_0000003"]
    assert result.checkpoint == checkpoint_root(run_dir) / "step_0000003"
    failed = [r for r in read_metrics(run_dir / METRICS_FILE) if r["kind"] == "eval_failed"]
    expected = "RuntimeError: planted decoding failure second line"
    assert [(r["step"], r["error"]) for r in failed] == [(2, expected), (3, expected)]
    assert result.eval_failures == failed
    summary = result.summary(framework)
    assert summary["step"] == 3 and summary["eval_failed"] == failed[-1] and "val_loss" not in summary
    assert "warning: evaluation at step 3 failed (RuntimeError: planted decoding failure" in capsys.readouterr().err
