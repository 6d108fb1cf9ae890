"""The "transformer" family: the book's and the original paper's encoder-decoder (the default).

Options: every ModelConfig field except the T5-only ones (relative positions, rms norm, gated FFN,
a head size other than d_model / num_heads). Weight table: see module_specs below.
"""

from shared.families.family import BPE_TOKENIZER, Family
from shared.families.transformer.options import OPTIONS, problems
from shared.families.transformer.presets import PRESETS
from shared.families.transformer.weights import module_specs

FAMILY = Family(
    name="transformer", problems=problems, module_specs=module_specs, decoder_only=False,
    tokenizer=BPE_TOKENIZER, presets=PRESETS,
)

__all__ = ["FAMILY", "OPTIONS", "PRESETS", "module_specs", "problems"]
