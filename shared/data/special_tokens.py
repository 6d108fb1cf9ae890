"""Fixed special-token ids and strings, identical for every tokenizer, model and batch.

The ids are fixed (not looked up per tokenizer) so that padding masks, decoding loops and the
weight format can hard-wire them; `shared.data.tokenizer` checks every tokenizer against them.
"""

PAD_ID = 0  # padding; masks in both stacks are derived from this id
BOS_ID = 1  # begins every decoder input
EOS_ID = 2  # ends every source and every target sequence
UNK_ID = 3  # characters the tokenizer never saw in training

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<bos>"
EOS_TOKEN = "<eos>"
UNK_TOKEN = "<unk>"

# In id order: the tokenizer trainer assigns ids 0..3 to these in exactly this order.
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)
SPECIAL_IDS = {PAD_TOKEN: PAD_ID, BOS_TOKEN: BOS_ID, EOS_TOKEN: EOS_ID, UNK_TOKEN: UNK_ID}
