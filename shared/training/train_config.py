"""The experiment configuration for pre-training: model choice, data, optimiser, schedule, bookkeeping.

Two config layers, as in Flax's wmt example: `ModelConfig` says what the network is, `TrainConfig`
says how it is trained. Both stacks read the same TrainConfig, so every numerical choice of training
(Adam's epsilon, the clipping rule, label smoothing, the schedule) is written down once, here.

The model's vocabulary sizes are not set here: they come from the tokenizer trained on the corpus
(`resolve_model_config`), so a recipe never disagrees with its own tokenizer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from shared.config.model_config import ConfigError, ModelConfig
from shared.families import family_of
from shared.json_config import JsonConfig
from shared.training.sharding import STRATEGIES, MeshSpec
from shared.parity.mixed_precision import MATMUL_PRECISION, TRAIN_PRECISIONS

CORPORA = ("toy", "multi30k", "tweetsum", "text")  # as shared.data.CORPORA (not imported: that pulls in tokenizers)
OPTIMIZERS = ("adam", "adamw")  # adam: weight_decay is L2 (torch.optim.Adam); adamw: decoupled
SCHEDULES = ("constant", "inverse_sqrt", "cosine")  # formulas: shared/training/schedules.py
FRAMEWORKS = ("torch", "jax")
DEVICES = ("auto", "cpu", "gpu")
ATTENTION_KERNELS = ("math", "fused")  # as torch_impl.layers / jax_impl.layers (not imported here)
_VOCAB_FIELDS = ("src_vocab_size", "tgt_vocab_size")


@dataclass(frozen=True)
class TrainConfig(JsonConfig):
    """How to pre-train one model; JSON round trip via to_json/from_json, validated on creation."""

    kind: ClassVar[str] = "train config"

    # -- model: a preset plus overrides, or a whole ModelConfig (vocab sizes come from the tokenizer)
    model_preset: str | None = "tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    model: ModelConfig | None = None
    init_checkpoint: str | None = None  # start from these weights (e.g. the same init in both stacks)
    # -- data
    corpus: str = "toy"
    src_lang: str | None = None  # None: the corpus default (toy xa->xb, multi30k en->de)
    tgt_lang: str | None = None
    data_dir: str | None = None  # multi30k: shared.data.multi30k.search_dirs; tweetsum: ../shared/data/book-ch5
    vocab_size: int = 1000  # BPE vocabulary requested per tokenizer (small corpora may give fewer)
    joint_vocab: bool = True  # one tokenizer for both sides (required by tie_embeddings='all')
    max_tokens: int | None = None  # tokens per batch, padding included; and/or batch_size
    batch_size: int | None = 64  # sentence pairs per batch
    max_len: int = 64  # sequences are truncated to this many tokens (EOS kept)
    pad_to_multiple: int = 8  # padded lengths rounded up: fewer shapes, fewer jit recompiles
    # -- optimiser: Adam moments with bias correction, eps added outside the square root
    optimizer: str = "adam"
    lr: float = 1e-3  # the peak learning rate of the schedule
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-9
    weight_decay: float = 0.0
    # -- schedule, as a function of the 0-based update index (shared/training/schedules.py)
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr: float = 0.0  # the cosine schedule's floor
    total_steps: int | None = 1000  # exactly one of total_steps and epochs
    epochs: int | None = None
    # -- regularisation (dropout rates are the ModelConfig's; a rate of 0 turns that dropout off)
    clip_norm: float | None = None  # global-norm clipping: g * max / |g| when |g| >= max; None = off
    label_smoothing: float = 0.0
    # -- bookkeeping
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # 0 = only at the end
    save_every: int = 0  # 0 = only at the end
    keep_last: int | None = 3  # checkpoints kept (the newest); None keeps all
    bleu_sentences: int = 200  # validation sentences decoded for BLEU (tweetsum: ROUGE) at each eval; 0 = none
    max_decode_len: int = 64  # new tokens per greedy decode
    # -- execution
    torch_compile: bool = False
    # "fused": F.scaled_dot_product_attention + one q/k/v GEMM (torch), jax.nn.dot_product_attention
    # (jax; cuDNN on a GPU in 16 bits); "math": the attention written out. Same function, same weights.
    attention: str = "math"
    device: str = "auto"
    # float32: full-precision matmuls pinned on GPU in both stacks; tf32: TF32 matmuls; bf16-mixed:
    # float32 weights, gradients and Adam moments, bfloat16 matmuls (shared/parity/mixed_precision.py).
    precision: str = "float32"
    # -- scale-out (shared/training/sharding.py); each stack reads its own, so one config serves both
    mesh: str | None = None  # JAX device mesh, e.g. "data=4" or "fsdp=4"; None = one device
    strategy: str | None = None  # torch under torchrun: "ddp" or "fsdp"; None = one process

    def __post_init__(self) -> None:
        # JSON has no tuples; accept a two-element list for betas and store the tuple.
        if isinstance(self.betas, list):
            object.__setattr__(self, "betas", tuple(self.betas))
        problems = self.problems()
        if problems:
            raise ConfigError("invalid TrainConfig:\n  - " + "\n  - ".join(problems))

    # ----------------------------------------------------------------------------------------------
    def problems(self) -> list[str]:
        """Every reason this config cannot drive a training run (empty when valid)."""
        found: list[str] = []
        found += self._model_problems()
        if self.corpus not in CORPORA:
            found.append(f"unknown corpus {self.corpus!r}; expected one of {', '.join(CORPORA)}")
        for name in ("src_lang", "tgt_lang", "data_dir", "init_checkpoint"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                found.append(f"{name} must be a string or null, got {value!r}")
        if _positive_int(self.vocab_size) and self.vocab_size <= 4:
            found.append(f"vocab_size must exceed the 4 special tokens, got {self.vocab_size}")
        elif not _positive_int(self.vocab_size):
            found.append(f"vocab_size must be a positive integer, got {self.vocab_size!r}")
        if self.max_tokens is None and self.batch_size is None:
            found.append("give max_tokens and/or batch_size (both are null)")
        for name in ("max_tokens", "batch_size"):
            value = getattr(self, name)
            if value is not None and not _positive_int(value):
                found.append(f"{name} must be a positive integer or null, got {value!r}")
        if not _positive_int(self.max_len) or self.max_len < 2:
            found.append(f"max_len must be an integer >= 2 (a token and EOS), got {self.max_len!r}")
        if not _positive_int(self.pad_to_multiple):
            found.append(f"pad_to_multiple must be a positive integer, got {self.pad_to_multiple!r}")
        found += self._optimizer_problems()
        found += self._schedule_problems()
        if self.clip_norm is not None and not (_number(self.clip_norm) and self.clip_norm > 0):
            found.append(f"clip_norm must be > 0 or null (off), got {self.clip_norm!r}")
        if not (_number(self.label_smoothing) and 0.0 <= self.label_smoothing < 1.0):
            found.append(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        if not _non_negative_int(self.seed):
            found.append(f"seed must be a non-negative integer, got {self.seed!r}")
        if not _positive_int(self.log_every):
            found.append(f"log_every must be a positive integer, got {self.log_every!r}")
        for name in ("eval_every", "save_every", "bleu_sentences"):
            if not _non_negative_int(getattr(self, name)):
                found.append(f"{name} must be a non-negative integer (0 = off), got {getattr(self, name)!r}")
        if self.keep_last is not None and not _positive_int(self.keep_last):
            found.append(f"keep_last must be a positive integer or null (keep all), got {self.keep_last!r}")
        if not _positive_int(self.max_decode_len):
            found.append(f"max_decode_len must be a positive integer, got {self.max_decode_len!r}")
        for name in ("torch_compile", "joint_vocab"):
            if not isinstance(getattr(self, name), bool):
                found.append(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.device not in DEVICES:
            found.append(f"unknown device {self.device!r}; expected one of {', '.join(DEVICES)}")
        if self.attention not in ATTENTION_KERNELS:
            found.append(f"unknown attention {self.attention!r}; expected one of {', '.join(ATTENTION_KERNELS)}")
        if self.precision not in TRAIN_PRECISIONS:
            found.append(f"unknown precision {self.precision!r}; expected one of {', '.join(TRAIN_PRECISIONS)}")
        found += _scale_out_problems(self.mesh, self.strategy)
        return found

    def _model_problems(self) -> list[str]:
        found: list[str] = []
        if not isinstance(self.model_overrides, dict):
            return [f"model_overrides must be a JSON object, got {type(self.model_overrides).__name__}"]
        fixed = sorted(set(self.model_overrides) & set(_VOCAB_FIELDS))
        if fixed:
            found.append(
                f"model_overrides may not set {', '.join(fixed)}: the vocabulary sizes come from the "
                "tokenizer; set vocab_size instead"
            )
        if self.model is not None:
            if self.model_overrides:
                found.append("give either model (a whole ModelConfig) or model_overrides, not both")
            if not isinstance(self.model, ModelConfig):
                found.append(f"model must be a ModelConfig, got {type(self.model).__name__}")
                return found
            base = self.model
        elif self.model_preset is None:
            return found + ["give model_preset (with optional model_overrides) or model"]
        else:
            try:
                base = ModelConfig.from_preset(self.model_preset)
            except ConfigError as error:
                return found + [str(error)]
        try:
            overrides = {k: v for k, v in self.model_overrides.items() if k not in _VOCAB_FIELDS}
            model = base.replace(**overrides) if self.model is None else base
        except (ConfigError, TypeError) as error:
            return found + [f"model: {error}".replace("\n", "\n  ")]
        if model.pad_id != 0:
            found.append(f"the data pipeline pads with id 0, so the model's pad_id must be 0, got {model.pad_id}")
        decoder_only = family_of(model).decoder_only
        if decoder_only and self.bleu_sentences:
            found.append(f"a {model.family} model (decoder-only) translates nothing: set bleu_sentences to 0")
        if not decoder_only and self.corpus == "text":
            found.append("the text corpus (plain lines) trains decoder-only models (causal_lm) only")
        if model.tie_embeddings == "all" and self.joint_vocab is False:
            found.append("tie_embeddings='all' shares one table between source and target: set joint_vocab true")
        if _positive_int(self.max_len) and self.max_len > model.max_len:
            found.append(f"max_len ({self.max_len}) exceeds the model's positional range max_len ({model.max_len})")
        return found

    def _optimizer_problems(self) -> list[str]:
        found: list[str] = []
        if self.optimizer not in OPTIMIZERS:
            found.append(f"unknown optimizer {self.optimizer!r}; expected one of {', '.join(OPTIMIZERS)}")
        if not (_number(self.lr) and self.lr > 0):
            found.append(f"lr must be > 0, got {self.lr!r}")
        if not (isinstance(self.betas, tuple) and len(self.betas) == 2 and all(_number(b) and 0 <= b < 1 for b in self.betas)):
            found.append(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        if not (_number(self.eps) and self.eps > 0):
            found.append(f"eps must be > 0, got {self.eps!r}")
        if not (_number(self.weight_decay) and self.weight_decay >= 0):
            found.append(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        return found

    def _schedule_problems(self) -> list[str]:
        found: list[str] = []
        if self.schedule not in SCHEDULES:
            found.append(f"unknown schedule {self.schedule!r}; expected one of {', '.join(SCHEDULES)}")
        if not _non_negative_int(self.warmup_steps):
            found.append(f"warmup_steps must be a non-negative integer, got {self.warmup_steps!r}")
        elif self.schedule == "inverse_sqrt" and self.warmup_steps == 0:
            found.append("the inverse_sqrt schedule peaks at warmup_steps: give warmup_steps > 0")
        if not (_number(self.min_lr) and self.min_lr >= 0):
            found.append(f"min_lr must be >= 0, got {self.min_lr!r}")
        elif _number(self.lr) and self.min_lr > self.lr:
            found.append(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        if (self.total_steps is None) == (self.epochs is None):
            found.append("give exactly one of total_steps and epochs")
        for name in ("total_steps", "epochs"):
            value = getattr(self, name)
            if value is not None and not _positive_int(value):
                found.append(f"{name} must be a positive integer or null, got {value!r}")
        if (
            self.schedule == "cosine"
            and _positive_int(self.total_steps)
            and _non_negative_int(self.warmup_steps)
            and self.warmup_steps >= self.total_steps
        ):
            found.append(f"cosine needs warmup_steps ({self.warmup_steps}) < total_steps ({self.total_steps})")
        return found

    # ----------------------------------------------------------------------------------------------
    @property
    def matmul_precision(self) -> str:
        """How float32 matmuls run: "tf32" only for precision tf32 (bf16-mixed pins full float32)."""
        return MATMUL_PRECISION.get(self.precision, "float32")

    def base_model_config(self) -> ModelConfig:
        """The ModelConfig before the tokenizer sets its vocabulary sizes."""
        if self.model is not None:
            return self.model
        return ModelConfig.from_preset(self.model_preset, **self.model_overrides)

    def resolve_model_config(self, src_vocab_size: int, tgt_vocab_size: int) -> ModelConfig:
        """The ModelConfig to train: preset/model + overrides, vocabulary sizes from the tokenizer."""
        return self.base_model_config().replace(src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size)


    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["model"] = None if self.model is None else self.model.to_dict()
        data["betas"] = list(self.betas)
        data["model_overrides"] = dict(self.model_overrides)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        cls.check_object(data)
        data = dict(data)
        if "matmul_precision" in data and "precision" not in data:
            data["precision"] = data.pop("matmul_precision")  # the field's name before bf16-mixed
        cls.reject_unknown(data)
        if isinstance(data.get("model"), dict):
            try:
                data["model"] = ModelConfig.from_dict(data["model"])
            except ConfigError as error:
                raise ConfigError(f"train config field 'model': {error}") from error
        return cls(**data)


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _non_negative_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)



def _scale_out_problems(mesh: Any, strategy: Any) -> list[str]:
    found = []
    if mesh is not None and not isinstance(mesh, str):
        found.append(f"mesh must be a string like 'data=4' or null, got {mesh!r}")
    elif mesh is not None:
        try:
            MeshSpec.parse(mesh)
        except ValueError as error:
            found.append(str(error))
    if strategy is not None and strategy not in STRATEGIES:
        found.append(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)} or null")
    return found
