"""Importers for the book's own checkpoints (docs/BOOK_MODELS.md): book keys -> our keys.

`import_book_ch3` reads model A (the chapter-3 "from scratch" model), `import_book_ch4` model B
(the chapter-4 wrapper around torch.nn.Transformer). Each is a table of rules, one per book key:
(expected book shape, [(our state-dict key, rows taken)]), built from sizes read off the tensors.
Every input tensor is consumed exactly once: a missing, unexpected or misshapen tensor is reported
by key, all problems at once. The positional-encoding buffer is not a parameter of ours (we rebuild
it from the config), so it is consumed by checking that it is our sinusoid.
Numpy in, numpy out: torch is imported only by `read_state_dict`, and only for torch.save files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import ml_dtypes
import numpy as np

from shared.checkpoints.checkpoint import FLOAT_DTYPES, CheckpointError, check_tensors, read_tensors
from shared.config.model_config import ConfigError, ModelConfig
from shared.parity.numerics import sinusoid_table

# Sizes an importer reads from the tensors; the caller cannot override them.
INFERRED_FIELDS = (
    "src_vocab_size",
    "tgt_vocab_size",
    "d_model",
    "d_ff",
    "num_encoder_layers",
    "num_decoder_layers",
    "max_len",
)
# What the tensors cannot tell; the preset supplies these and the caller may override them.
OVERRIDABLE_FIELDS = ("num_heads", "norm_eps", "dropout", "attention_dropout", "embedding_dropout", "pad_id")

# The book built its table in float32 torch (angle = pos * exp(-2i ln(10000) / D), then sin/cos);
# ours is computed in float64 and rounded. The float32 angle carries a relative error of a few
# ulps, i.e. an absolute error growing with the position: measured max |diff| / pos is 7.8e-8 at
# (5000, 512) and 7.0e-8 at (256, 256), below one float32 epsilon (1.19e-7) per position. We allow
# 4 epsilons per position, plus 1e-6 and one epsilon of the table's own dtype (its final rounding).
# Any other encoding (non-interleaved, other base or exponent, zeroed first row) is off by >1e-2
# within the first few positions, far outside this bound.
PE_ATOL = 1e-6
PE_SLACK_PER_POSITION = 4 * float(np.finfo(np.float32).eps)

# Prefixes that wrappers put in front of every key: DataParallel / DDP and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


@dataclass(frozen=True)
class _Rule:
    """One book tensor: its expected shape and the rows of it that become each of our tensors."""

    shape: tuple[int, ...]
    targets: tuple[tuple[str, slice | None], ...]  # (our key, rows taken; None = the whole tensor)


# --------------------------------------------------------------------------------------------------
# Reading a file


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Read a state dict from a safetensors file or a `torch.save(model.state_dict())` file.

    The format is recognised from the file's first bytes, not its name. torch.save files are read
    with `weights_only=True` (never a full unpickle) and converted bit for bit (bf16 included).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found")
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: 8-byte header length, then JSON
        return read_tensors(path)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":  # torch.save: zip, or legacy pickle
        return _read_torch_file(path)
    raise CheckpointError(
        f"{path} is neither a safetensors file nor a torch.save file (first bytes {head!r})"
    )


def _read_torch_file(path: Path) -> dict[str, np.ndarray]:
    import torch  # only this branch needs torch; shared/ must not import it at module level

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any failure here means the file cannot be used; say which file
        raise CheckpointError(
            f"{path} is not a readable torch.save state dict (truncated, corrupt, or a pickled "
            f"object other than tensors; save model.state_dict()): {type(error).__name__}: {error}"
        ) from error
    if not isinstance(loaded, dict):
        raise CheckpointError(
            f"{path} holds a {type(loaded).__name__}, not a state dict; save model.state_dict()"
        )
    problems, tensors = [], {}
    for key, value in loaded.items():
        if not isinstance(value, torch.Tensor):
            problems.append(f"{key}: {type(value).__name__} value, not a tensor")
            continue
        try:
            tensors[str(key)] = _torch_to_numpy(torch, value)
        except TypeError as error:
            problems.append(f"{key}: dtype {value.dtype} has no numpy equivalent ({error})")
    if problems:
        raise CheckpointError(
            f"{path} is not a plain state dict ({len(problems)} problem(s)):\n  - " + "\n  - ".join(problems)
        )
    return tensors


def _torch_to_numpy(torch: Any, tensor: Any) -> np.ndarray:
    """Bit-exact: bfloat16 travels as its raw 16 bits and is re-labelled with ml_dtypes."""
    tensor = tensor.detach().cpu().contiguous()
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


# --------------------------------------------------------------------------------------------------
# Public importers


def import_book_ch3(tensors: dict[str, np.ndarray], **overrides: Any) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """Model A (book chapter 3) state dict -> (config, our state dict). See docs/BOOK_MODELS.md."""
    tensors = _strip_wrapper_prefix(tensors)
    problems: list[str] = []
    layers = {stack: _count_layers(tensors, rf"^{stack}\.layers\.(\d+)\.") for stack in ("encoder", "decoder")}
    sizes = {
        "src_vocab_size": _infer(tensors, problems, "src_vocab_size", [(r"^encoder\.src_emb\.weight$", 0)]),
        "tgt_vocab_size": _infer(
            tensors, problems, "tgt_vocab_size",
            [(r"^decoder\.tgt_emb\.weight$", 0), (r"^projection\.weight$", 0)],
        ),
        "d_model": _infer(
            tensors, problems, "d_model",
            [(r"^encoder\.src_emb\.weight$", 1), (r"^decoder\.tgt_emb\.weight$", 1), (r"^projection\.weight$", 1)],
        ),
        "max_len": _infer(
            tensors, problems, "max_len", [(r"^encoder\.pos_emb\.pe_table$", -2), (r"^decoder\.pos_emb\.pe_table$", -2)]
        ),
        "num_encoder_layers": layers["encoder"],
        "num_decoder_layers": layers["decoder"],
    }
    if any(layers.values()):
        sizes["d_ff"] = _infer(tensors, problems, "d_ff", [(r"\.pos_ffn\.fc\.0\.weight$", 0)])
    return _import("book-ch3", tensors, sizes, problems, overrides, _ch3_rules, _ch3_pe_keys)


def import_book_ch4(tensors: dict[str, np.ndarray], **overrides: Any) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """Model B (book chapter 4, torch.nn.Transformer inside) state dict -> (config, our state dict)."""
    tensors = _strip_wrapper_prefix(tensors)
    problems: list[str] = []
    layers = {
        stack: _count_layers(tensors, rf"^transformer\.{stack}\.layers\.(\d+)\.") for stack in ("encoder", "decoder")
    }
    sizes = {
        "src_vocab_size": _infer(tensors, problems, "src_vocab_size", [(r"^source_embedding\.weight$", 0)]),
        "tgt_vocab_size": _infer(
            tensors, problems, "tgt_vocab_size",
            [(r"^target_embedding\.weight$", 0), (r"^output_layer\.weight$", 0)],
        ),
        "d_model": _infer(
            tensors, problems, "d_model",
            [(r"^source_embedding\.weight$", 1), (r"^target_embedding\.weight$", 1), (r"^output_layer\.weight$", 1)],
        ),
        "max_len": _infer(tensors, problems, "max_len", [(r"^positional_encoding\.pe_table$", -2)]),
        "num_encoder_layers": layers["encoder"],
        "num_decoder_layers": layers["decoder"],
    }
    if any(layers.values()):
        sizes["d_ff"] = _infer(tensors, problems, "d_ff", [(r"\.linear1\.weight$", 0)])
    return _import("book-ch4", tensors, sizes, problems, overrides, _ch4_rules, lambda c: ["positional_encoding.pe_table"])


BOOK_IMPORTERS: dict[str, Callable[..., tuple[ModelConfig, dict[str, np.ndarray]]]] = {
    "book-ch3": import_book_ch3,
    "book-ch4": import_book_ch4,
}


# --------------------------------------------------------------------------------------------------
# The two key tables


def _ch3_rules(c: ModelConfig) -> dict[str, _Rule]:
    """Model A: bias-free W_Q/W_K/W_V/fc, norms with gamma/beta, FFN as Sequential(fc.0, ReLU, Dropout, fc.3)."""
    D, F = c.d_model, c.d_ff
    rules: dict[str, _Rule] = {}

    def whole(book: str, ours: str, shape: tuple[int, ...]) -> None:
        rules[book] = _Rule(shape, ((ours, None),))

    def norm(book: str, ours: str) -> None:
        whole(f"{book}.gamma", f"{ours}.weight", (D,))
        whole(f"{book}.beta", f"{ours}.bias", (D,))

    def attention(book: str, ours: str) -> None:
        """book `...dec_enc_attn` -> our `...cross_attn` (+ `..._norm`: the book's norm lives inside)."""
        for book_proj, our_proj in (("W_Q", "q_proj"), ("W_K", "k_proj"), ("W_V", "v_proj"), ("fc", "out_proj")):
            whole(f"{book}.{book_proj}.weight", f"{ours}.{our_proj}.weight", (D, D))
        norm(f"{book}.ln", f"{ours}_norm")

    def feed_forward(book: str, ours: str) -> None:
        whole(f"{book}.fc.0.weight", f"{ours}.ffn.fc1.weight", (F, D))
        whole(f"{book}.fc.3.weight", f"{ours}.ffn.fc2.weight", (D, F))
        norm(f"{book}.ln", f"{ours}.ffn_norm")

    whole("encoder.src_emb.weight", "src_embed.weight", (c.src_vocab_size, D))
    whole("decoder.tgt_emb.weight", "tgt_embed.weight", (c.tgt_vocab_size, D))
    for i in range(c.num_encoder_layers):
        book, ours = f"encoder.layers.{i}", f"encoder.layers.{i}"
        attention(f"{book}.enc_self_attn", f"{ours}.self_attn")
        feed_forward(f"{book}.pos_ffn", ours)
    for i in range(c.num_decoder_layers):
        book, ours = f"decoder.layers.{i}", f"decoder.layers.{i}"
        attention(f"{book}.dec_self_attn", f"{ours}.self_attn")
        attention(f"{book}.dec_enc_attn", f"{ours}.cross_attn")
        feed_forward(f"{book}.pos_ffn", ours)
    whole("projection.weight", "output_proj.weight", (c.tgt_vocab_size, D))
    return rules


def _ch3_pe_keys(c: ModelConfig) -> list[str]:
    return ["encoder.pos_emb.pe_table", "decoder.pos_emb.pe_table"]


def _ch4_rules(c: ModelConfig) -> dict[str, _Rule]:
    """Model B: nn.Transformer's packed in_proj (q, k, v stacked by rows) and numbered norms."""
    D, F = c.d_model, c.d_ff
    rules: dict[str, _Rule] = {}

    def whole(book: str, ours: str, shape: tuple[int, ...]) -> None:
        rules[book] = _Rule(shape, ((ours, None),))

    def linear(book: str, ours: str, n_in: int, n_out: int) -> None:
        whole(f"{book}.weight", f"{ours}.weight", (n_out, n_in))
        whole(f"{book}.bias", f"{ours}.bias", (n_out,))

    def norm(book: str, ours: str) -> None:
        whole(f"{book}.weight", f"{ours}.weight", (D,))
        whole(f"{book}.bias", f"{ours}.bias", (D,))

    def attention(book: str, ours: str) -> None:
        """nn.MultiheadAttention: in_proj rows [0, D) are q, [D, 2D) k, [2D, 3D) v."""
        rows = {"q_proj": slice(0, D), "k_proj": slice(D, 2 * D), "v_proj": slice(2 * D, 3 * D)}
        for leaf, shape in (("weight", (3 * D, D)), ("bias", (3 * D,))):
            rules[f"{book}.in_proj_{leaf}"] = _Rule(
                shape, tuple((f"{ours}.{proj}.{leaf}", r) for proj, r in rows.items())
            )
        linear(f"{book}.out_proj", f"{ours}.out_proj", D, D)

    whole("source_embedding.weight", "src_embed.weight", (c.src_vocab_size, D))
    whole("target_embedding.weight", "tgt_embed.weight", (c.tgt_vocab_size, D))
    for i in range(c.num_encoder_layers):
        book, ours = f"transformer.encoder.layers.{i}", f"encoder.layers.{i}"
        attention(f"{book}.self_attn", f"{ours}.self_attn")
        norm(f"{book}.norm1", f"{ours}.self_attn_norm")  # TransformerEncoderLayer: norm1 after self-attn
        linear(f"{book}.linear1", f"{ours}.ffn.fc1", D, F)
        linear(f"{book}.linear2", f"{ours}.ffn.fc2", F, D)
        norm(f"{book}.norm2", f"{ours}.ffn_norm")  # norm2 after the FFN
    norm("transformer.encoder.norm", "encoder.final_norm")
    for i in range(c.num_decoder_layers):
        book, ours = f"transformer.decoder.layers.{i}", f"decoder.layers.{i}"
        attention(f"{book}.self_attn", f"{ours}.self_attn")
        norm(f"{book}.norm1", f"{ours}.self_attn_norm")  # TransformerDecoderLayer: norm1 after self-attn,
        attention(f"{book}.multihead_attn", f"{ours}.cross_attn")
        norm(f"{book}.norm2", f"{ours}.cross_attn_norm")  # norm2 after cross-attn (multihead_attn),
        linear(f"{book}.linear1", f"{ours}.ffn.fc1", D, F)
        linear(f"{book}.linear2", f"{ours}.ffn.fc2", F, D)
        norm(f"{book}.norm3", f"{ours}.ffn_norm")  # norm3 after the FFN
    norm("transformer.decoder.norm", "decoder.final_norm")
    linear("output_layer", "output_proj", D, c.tgt_vocab_size)
    return rules


# --------------------------------------------------------------------------------------------------
# The shared machinery


def _import(
    preset: str,
    tensors: dict[str, np.ndarray],
    sizes: dict[str, int | None],
    problems: list[str],
    overrides: dict[str, Any],
    make_rules: Callable[[ModelConfig], dict[str, _Rule]],
    make_pe_keys: Callable[[ModelConfig], list[str]],
) -> tuple[ModelConfig, dict[str, np.ndarray]]:
    """Build the config, check every tensor against the rules, then split/rename (never change) values."""
    _check_overrides(preset, overrides)
    if problems:  # a size could not be read: the key table cannot even be built
        _raise(preset, problems)
    try:
        config = ModelConfig.from_preset(preset, **sizes, **overrides)
    except ConfigError as error:
        raise ConfigError(f"the {preset} checkpoint's sizes {sizes} with {overrides or 'no overrides'}: {error}") from error
    rules, pe_keys = make_rules(config), make_pe_keys(config)

    for key, rule in rules.items():
        if key not in tensors:
            problems.append(f"missing key {key}: expected shape {rule.shape}")
        elif tuple(tensors[key].shape) != rule.shape:
            problems.append(f"shape mismatch for {key}: expected {rule.shape}, found {tuple(tensors[key].shape)}")
    for key in pe_keys:
        if key not in tensors:
            problems.append(f"missing key {key}: expected the sinusoid buffer of shape (1, {config.max_len}, {config.d_model})")
        else:
            problems += sinusoid_buffer_problems(key, tensors[key], config.max_len, config.d_model)
    problems += [
        f"unexpected key {key}: shape {tuple(np.shape(tensors[key]))}, not part of a {preset} model"
        for key in tensors
        if key not in rules and key not in pe_keys
    ]
    problems += _dtype_problems({key: tensors[key] for key in rules if key in tensors})
    if problems:
        _raise(preset, problems)

    ours: dict[str, np.ndarray] = {}
    for key, rule in rules.items():
        for our_key, rows in rule.targets:
            assert our_key not in ours, f"{our_key} produced twice"  # a bug in the rule table
            ours[our_key] = np.array(tensors[key] if rows is None else tensors[key][rows], copy=True)
    check_tensors(config, ours, f"the {preset} import (rule table vs weight table)")  # table bug guard
    return config, ours


def _raise(preset: str, problems: list[str]) -> None:
    raise CheckpointError(
        f"not a {preset} state dict ({len(problems)} problem(s)):\n  - " + "\n  - ".join(problems)
    )


def _strip_wrapper_prefix(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Drop a prefix that DataParallel (`module.`) or torch.compile (`_orig_mod.`) put on every key."""
    if not isinstance(tensors, dict):
        raise CheckpointError(f"a state dict must be a dict of arrays, got {type(tensors).__name__}")
    for prefix in WRAPPER_PREFIXES:
        if tensors and all(key.startswith(prefix) for key in tensors):
            tensors = {key[len(prefix):]: value for key, value in tensors.items()}
    return tensors


def _count_layers(tensors: dict[str, np.ndarray], pattern: str) -> int:
    """1 + the highest layer index any key names (a gap then shows up as missing keys)."""
    indices = [int(m.group(1)) for key in tensors if (m := re.match(pattern, key))]
    return max(indices) + 1 if indices else 0


def _infer(
    tensors: dict[str, np.ndarray], problems: list[str], name: str, candidates: list[tuple[str, int]]
) -> int | None:
    """The size `name` from the first key (in sorted order) matching a candidate (regex, axis)."""
    for pattern, axis in candidates:
        for key in sorted(tensors):
            shape = np.shape(tensors[key])
            if re.search(pattern, key) and len(shape) >= (axis + 1 if axis >= 0 else -axis):
                return int(shape[axis])
    keys = " or ".join(pattern.strip("^$").replace("\\", "") for pattern, _ in candidates)
    problems.append(f"cannot infer {name}: no key {keys} (with enough dimensions)")
    return None


def _check_overrides(preset: str, overrides: dict[str, Any]) -> None:
    bad = []
    for name in overrides:
        if name in OVERRIDABLE_FIELDS:
            continue
        if name in INFERRED_FIELDS:
            bad.append(f"{name} is read from the tensors and cannot be overridden")
        elif name in ModelConfig.__dataclass_fields__:
            bad.append(f"{name} is fixed by the {preset} architecture and cannot be overridden")
        else:
            bad.append(f"unknown override {name!r}")
    if bad:
        raise ConfigError(
            f"invalid override(s) for {preset} (allowed: {', '.join(OVERRIDABLE_FIELDS)}):\n  - " + "\n  - ".join(bad)
        )


def _dtype_problems(params: dict[str, np.ndarray]) -> list[str]:
    """One float dtype for all parameters, reported by book key (a model would upcast mixed ones)."""
    problems = [
        f"dtype of {key}: expected a float dtype ({', '.join(FLOAT_DTYPES)}), found {value.dtype}"
        for key, value in params.items()
        if np.dtype(value.dtype) not in FLOAT_DTYPES.values()
    ]
    if problems or not params:
        return problems
    first_key = next(iter(params))
    first = params[first_key].dtype
    return [
        f"dtype mismatch for {key}: expected {first} (as {first_key}), found {value.dtype}"
        for key, value in params.items()
        if value.dtype != first
    ]


def sinusoid_buffer_problems(key: str, table: np.ndarray, max_len: int, d_model: int) -> list[str]:
    """[] when `table` (1, L, D) or (L, D) is our interleaved sinusoid within the float32 bound above."""
    L, D = max_len, d_model
    if tuple(table.shape) not in ((1, L, D), (L, D)):
        return [f"shape mismatch for {key}: expected (1, {L}, {D}), found {tuple(table.shape)}"]
    if np.dtype(table.dtype) not in FLOAT_DTYPES.values():
        return [f"dtype of {key}: expected a float dtype, found {table.dtype}"]
    found = np.asarray(table, dtype=np.float64).reshape(L, D)
    expected = sinusoid_table(L, D).astype(np.float64)
    positions = np.arange(L, dtype=np.float64)[:, None]  # (L, 1)
    allowed = PE_ATOL + PE_SLACK_PER_POSITION * positions + float(ml_dtypes.finfo(table.dtype).eps)
    error = np.abs(found - expected)
    bad = ~(error <= allowed)  # written so that NaN counts as bad
    if not bad.any():
        return []
    pos, dim = map(int, np.argwhere(bad)[0])
    return [
        f"{key} is not the interleaved sinusoid (even dims sin, odd dims cos, pos / 10000^(2i/D)): "
        f"{int(bad.sum())} of {bad.size} entries differ beyond float32 rounding; first at position {pos}, "
        f"dim {dim}: found {found[pos, dim]:.7g}, expected {expected[pos, dim]:.7g} "
        f"(allowed +-{allowed[pos, 0]:.2g})"
    ]
