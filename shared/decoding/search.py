"""Encoder-decoder search rules both stacks' generation loops follow.

The settings are shared/decoding/generation.py's GenerationConfig (one config for every family and
command); turning texts into fixed-shape batches and rows back into tokens is shared/decoding/
batching.py; the checks of what a loop accepts, shared/decoding/inputs.py. For an encoder-decoder (axis letters: B batch, S source length, T target length,
N max new tokens, V vocabulary):
  src_ids (B, S) int -> generated ids (B, T_out) numpy int32, without the leading BOS.
Generation starts from BOS; a row is finished once it emits EOS and then emits PAD; the batch stops
when every row is finished or after N tokens, so T_out = min(N, last row's EOS step + 1). A row
whose source is all PAD is a padding row (it fills a fixed-size batch): finished from the start.
PAD and BOS are never generated: the loss never trains the PAD logit and BOS only starts the
decoder input, so emitting either would be meaningless (and a PAD mid-sentence would be read as
padding by the next step's mask).

Beam search (num_beams = K > 1, lp = length_penalty); both stacks run exactly this:
  * A hypothesis's score is the sum of the float32 log-softmax of its tokens, taken over the
    tokens that may be generated (PAD and BOS at -inf before the softmax). A finished hypothesis
    (ended by EOS, EOS counted in its length L) ranks by  score / L ** lp  (the GNMT/HF "simple"
    normalisation: lp > 0 favours longer outputs, lp < 0 shorter ones, 0 ranks by raw score).
  * Each row keeps K alive beams (BOS + t tokens, none EOS) and a pool of at most K finished
    hypotheses. It starts from one alive beam, BOS with score 0; the other K - 1 start at -inf so
    the first step does not expand K copies of BOS (an -inf beam never beats a finite one).
  * Step t ranks the K * V extensions of the alive beams by score, best first, equal scores by the
    lower flat index beam * V + token, and walks the first 2K (each beam has a single EOS
    extension, so at least K of them are not EOS). An EOS extension among the first K ranks with a
    finite score is offered to the pool, which keeps the K best by normalised score (equal ones:
    the earlier found, i.e. pool before offers, offers by rank); EOS extensions ranked below the
    first K are dropped (HF's rule: with K = 1 this makes beam search exactly greedy). The first K
    non-EOS extensions, in rank order, become the next alive beams.
  * Stopping rule (HF's early_stopping=False): after step t a row is done when its pool holds K
    hypotheses and its best alive beam, normalised at its current length t + 1, is no better than
    the pool's worst: best_alive / (t + 1) ** lp <= worst_finished. Extending a beam only lowers
    its score, so for lp <= 0 nothing alive could enter the pool any more; for lp > 0 a longer
    continuation might, and the search gives it up (as HF does), which keeps K = 1 exactly greedy.
    Done rows offer nothing more. The batch stops when every row is done or after N steps.
  * After N steps, a row not done offers its alive beams (unfinished, length N) to the pool; the
    pool's best is the row's output: its tokens, EOS, then PAD. Padding rows return all PAD.
  * T_out is trimmed as for greedy: the last column where some row still holds a token.
Incremental decoding. The algorithms reach a model only through its family's incremental decoder,
an object with the same three operations in both stacks (torch_impl/incremental.py and
jax_impl/incremental.py; C copies of each source row, C = K for beam search, else 1):
  start(src (B, S), N, C)          -> cache for B*C rows, row b*C + c being copy c of source row b
                                      (the source is encoded once, then repeated)
  step(cache, tokens (B*C,), t)    -> (logits (B*C, V) for position t + 1, cache): feeds the token at
                                      position t (BOS at t = 0)
  reorder(cache, rows (B*C,))      -> cache in which row i continues row rows[i]; rows stay within
                                      their source row's copies (beam search moving hypotheses)
(jax_impl's operations also take the params first, and its cache is a pytree of fixed shapes.)
A key/value cache ("self_k"/"self_v" slots per decoder layer, the memory's "cross_k"/"cross_v"
computed once) makes each step one position of work; the reference decoder without a cache
keeps the tokens and re-runs the decoder over the whole prefix. Both give the same tokens
(GenerationConfig.use_cache picks; parity_tests/test_kv_cache.py). A new model family (a decoder-only
model, T5) plugs into greedy, top-k and beam search by providing these three operations.

Float32 scores are never -0.0 (log-softmax of finite logits gives +0.0 at most, and sums start at
+0.0), so the tie rule above does not depend on how a framework orders -0.0 against 0.0.
"""

from __future__ import annotations

from shared.config.model_config import ModelConfig


def normalized_score(score: float, length: int, length_penalty: float) -> float:
    """The rank of a finished hypothesis: score / length ** length_penalty (module docstring)."""
    return score / length**length_penalty


def banned_ids(model: ModelConfig) -> tuple[int, ...]:
    """Ids whose logits are set to -inf before choosing: PAD and BOS (see the module docstring).

    BOS is the model's decoder start id (`bos_id`; T5 starts from its pad id, so one id is banned).
    """
    return tuple(sorted({model.pad_id, model.bos_id}))


__all__ = ["banned_ids", "normalized_score"]
