"""LoRA configuration and which modules of a model it touches, matched as the PEFT library does.

LoRA (Hu et al. 2021) freezes a Linear layer's weight W (out, in) and learns a low-rank update:
    y = W x + b + scaling * B (A dropout(x)),   A (r, in), B (out, r),
    scaling = alpha / r   (or alpha / sqrt(r) with rsLoRA).
A starts kaiming-uniform like nn.Linear, B starts at zero, so a fresh adapter changes nothing.
Module paths use the PyTorch spelling (`decoder.layers.0.self_attn.q_proj`) in both stacks.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from shared.config.model_config import ConfigError, ModelConfig
from shared.json_config import JsonConfig
from shared.checkpoints.weight_table import ParamSpec, module_specs, param_specs

LINEAR_KINDS = ("linear", "linear_no_bias")  # module kinds (weight_table) LoRA can wrap
BIAS_MODES = ("none",)  # PEFT also has 'all' / 'lora_only'; they train base biases, not supported


class LoRAConfigError(ConfigError):
    """A LoRA configuration that is invalid, or does not fit a model; lists every problem."""


@dataclass(frozen=True)
class LoRAConfig(JsonConfig):
    """Adapter hyper-parameters. Defaults are the book's chapter-5 LoRA (PEFT's own: r=8, alpha=8)."""

    error: ClassVar[type[ConfigError]] = LoRAConfigError
    kind: ClassVar[str] = "LoRA config"

    r: int = 16  # rank of the update B @ A
    alpha: float = 32  # PEFT's lora_alpha
    dropout: float = 0.05  # on the LoRA branch's input only, as PEFT's lora_dropout
    # A tuple of names matches a module whose path equals a name or ends with "." + name;
    # a string is a regular expression that must match the whole module path (PEFT's rules).
    target_modules: tuple[str, ...] | str = ("q_proj", "v_proj")
    use_rslora: bool = False  # scaling alpha / sqrt(r) (rank-stabilised) instead of alpha / r
    modules_to_save: tuple[str, ...] = ()  # modules trained fully beside the adapters (suffix match)
    bias: str = "none"

    def __post_init__(self) -> None:
        # Name lists become sorted tuples: order means nothing to the matching (PEFT keeps a set), and
        # one canonical form makes configs comparable and adapter files byte-identical across stacks.
        for name in ("target_modules", "modules_to_save"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                object.__setattr__(self, name, tuple(sorted(set(value))))
        problems = self.problems()
        if problems:
            raise LoRAConfigError("invalid LoRAConfig:\n  - " + "\n  - ".join(problems))

    @property
    def scaling(self) -> float:
        """alpha / r, or alpha / sqrt(r) with use_rslora."""
        return self.alpha / math.sqrt(self.r) if self.use_rslora else self.alpha / self.r

    def problems(self) -> list[str]:
        found: list[str] = []
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            found.append(f"r must be a positive integer, got {self.r!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            found.append(f"alpha must be a positive number, got {self.alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            found.append(f"dropout must be in [0, 1), got {self.dropout!r}")
        targets = self.target_modules
        if isinstance(targets, str):
            try:
                re.compile(targets)
            except re.error as error:
                found.append(f"target_modules {targets!r} is not a valid regular expression: {error}")
        elif not isinstance(targets, tuple) or not targets:
            found.append(f"target_modules must be a non-empty list of names or a regex string, got {targets!r}")
        elif not all(isinstance(t, str) and t for t in targets):
            found.append(f"target_modules names must be non-empty strings, got {targets!r}")
        if not isinstance(self.modules_to_save, tuple) or not all(
            isinstance(m, str) and m for m in self.modules_to_save
        ):
            found.append(f"modules_to_save must be a list of non-empty names, got {self.modules_to_save!r}")
        if not isinstance(self.use_rslora, bool):
            found.append(f"use_rslora must be a bool, got {self.use_rslora!r}")
        if self.bias not in BIAS_MODES:
            found.append(f"bias {self.bias!r} is not supported; expected one of {', '.join(BIAS_MODES)}")
        return found

    # ----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name in ("target_modules", "modules_to_save"):
            if isinstance(data[name], tuple):
                data[name] = list(data[name])
        return data


# -- which modules a config touches (PEFT's matching rules, on the PyTorch module paths) ----------
@dataclass(frozen=True)
class LoRATarget:
    """One Linear layer that gets an adapter: lora_A (r, in_features), lora_B (out_features, r)."""

    module: str  # PyTorch module path, e.g. "encoder.layers.0.self_attn.q_proj"
    in_features: int
    out_features: int


def _module_paths(config: ModelConfig) -> dict[str, str | None]:
    """Every module path that holds parameters or contains such modules -> its kind (None: container)."""
    paths: dict[str, str | None] = {}
    for module, kind, _ in module_specs(config):
        parts = module.split(".")
        for end in range(1, len(parts)):
            paths.setdefault(".".join(parts[:end]), None)
        paths[module] = kind
    return paths


def _name_matches(name: str, path: str) -> bool:
    """PEFT's list rule: the path is the name, or ends with '.' + name."""
    return path == name or path.endswith("." + name)


def _excluded_by_modules_to_save(lora: LoRAConfig, path: str) -> bool:
    # PEFT never puts an adapter inside a module it trains fully (tuners_utils.check_target_module_exists).
    return any(re.match(rf"(^|.*\.){m}($|\..*)", path) for m in lora.modules_to_save)


def resolve_targets(config: ModelConfig, lora: LoRAConfig) -> list[LoRATarget]:
    """The Linear layers `lora` adapts in a model of `config`, in state-dict order.

    Raises LoRAConfigError listing every target name (or the regex) that matches no Linear layer,
    and every match that is not a Linear layer (PEFT cannot adapt those either).
    """
    paths = _module_paths(config)
    shapes = {module: shapes for module, _, shapes in module_specs(config)}
    targets = lora.target_modules
    problems: list[str] = []

    if isinstance(targets, str):
        matched = [p for p in paths if re.fullmatch(targets, p)]
        if not matched:
            problems.append(f"target_modules regex {targets!r} matches no module of this model")
    else:
        matched = [p for p in paths if any(_name_matches(t, p) for t in targets)]
        for name in targets:
            if not any(_name_matches(name, p) for p in paths):
                problems.append(f"unknown target module {name!r}: no module path is or ends with it")
    chosen: list[LoRATarget] = []
    for path in matched:
        if _excluded_by_modules_to_save(lora, path):
            continue
        if paths[path] not in LINEAR_KINDS:
            what = "a container module" if paths[path] is None else f"a {paths[path]} module"
            problems.append(f"target {path!r} is {what}, not a Linear layer; LoRA adapts Linear layers only")
            continue
        out_features, in_features = shapes[path]["weight"]
        chosen.append(LoRATarget(path, in_features, out_features))
    if not problems and not chosen:
        problems.append("no Linear layer left to adapt (all matches are in modules_to_save)")
    if problems:
        raise LoRAConfigError(
            f"LoRA target_modules do not fit this model ({len(problems)} problem(s)):\n  - "
            + "\n  - ".join(problems)
            + f"\n  Linear layers available: {', '.join(sorted({p.rsplit('.', 1)[-1] for p, k in paths.items() if k in LINEAR_KINDS}))}"
        )
    return chosen


def resolve_modules_to_save(config: ModelConfig, lora: LoRAConfig) -> list[str]:
    """The module paths trained fully (PEFT: path.endswith(name); outermost match wins)."""
    paths = _module_paths(config)
    problems = [
        f"modules_to_save name {name!r} matches no module with parameters"
        for name in lora.modules_to_save
        if not any(p.endswith(name) for p in paths)
    ]
    if problems:
        raise LoRAConfigError("modules_to_save do not fit this model:\n  - " + "\n  - ".join(problems))
    matched = [p for p in paths if any(p.endswith(name) for name in lora.modules_to_save)]
    return [p for p in matched if not any(p.startswith(outer + ".") for outer in matched)]


def saved_param_specs(config: ModelConfig, lora: LoRAConfig) -> list[ParamSpec]:
    """The parameters of the modules_to_save, in state-dict order."""
    saved = resolve_modules_to_save(config, lora)
    return [
        spec
        for spec in param_specs(config)
        if any(spec.torch_key.startswith(module + ".") for module in saved)
    ]


def format_parameter_report(trainable: int, total: int) -> str:
    """The line PEFT's print_trainable_parameters prints (total counts adapters and saved copies)."""
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
