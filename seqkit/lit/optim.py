"""AdamW with warm-up and a decay schedule, stepped once per optimizer step."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn


@dataclass(frozen=True)
class OptimizerConfig:
    """AdamW and its learning-rate schedule."""

    lr: float = 5e-4
    """Peak learning rate, reached at the end of warm-up."""
    betas: tuple[float, float] = (0.9, 0.98)
    """AdamW's moment decay rates."""
    eps: float = 1e-9
    """AdamW's epsilon."""
    weight_decay: float = 0.0
    """Decoupled weight decay, applied to matrices only (not to biases, norms)."""
    warmup_steps: int = 4000
    """Linear warm-up from 0 to `lr`."""
    schedule: Literal["inverse_sqrt", "cosine", "constant"] = "inverse_sqrt"
    """After warm-up: decay as 1/sqrt(step) (Vaswani et al.), cosine to `min_lr_ratio * lr`
    over the run's estimated steps, or constant."""
    min_lr_ratio: float = 0.0
    """Floor of the cosine schedule, as a fraction of `lr`."""

    def __post_init__(self) -> None:
        """Raises ValueError naming the first field out of range (NaN included)."""
        checks = [
            ("lr", 0 < self.lr < math.inf, "a number > 0"),
            ("betas", len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
             "two numbers in [0, 1)"),
            ("eps", 0 < self.eps < math.inf, "a number > 0"),
            ("weight_decay", 0 <= self.weight_decay < math.inf, "a number >= 0"),
            ("warmup_steps", self.warmup_steps >= 0, "an int >= 0"),
            ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "a number in [0, 1]"),
        ]  # fmt: skip
        for name, ok, want in checks:
            if not ok:
                raise ValueError(f"optimizer.{name} must be {want}, got {getattr(self, name)}")


def lr_factor(step: int, config: OptimizerConfig, total_steps: int) -> float:
    """Multiplier of the peak learning rate at optimizer step `step` (0-based)."""
    step += 1
    warmup = max(config.warmup_steps, 1)
    if step < warmup:
        return step / warmup
    if config.schedule == "inverse_sqrt":
        return math.sqrt(warmup / step)
    if config.schedule == "cosine":
        progress = min((step - warmup) / max(total_steps - warmup, 1), 1.0)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine
    return 1.0


def configure_adamw(module: nn.Module, config: OptimizerConfig, total_steps: int) -> dict:
    """Optimizer and per-step scheduler, as Lightning's `configure_optimizers` returns them."""
    params = [p for p in module.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, config, total_steps)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def as_config(cls: type, value):
    """Configs arrive as dataclasses (Python, CLI) or as dicts (checkpoints)."""
    return cls(**value) if isinstance(value, dict) else value


def rescale_learning_rate(checkpoint: dict, lr: float) -> None:
    """Make a resumed run train at peak learning rate `lr` where the checkpoint's run had
    another: its optimizer and scheduler states (restored after this) are scaled to match,
    keeping the schedule's position."""
    saved = (checkpoint.get("hyper_parameters") or {}).get("optimizer") or {}
    old = saved.get("lr")
    if not old or old == lr:
        return
    scale = lr / old
    for state in checkpoint.get("optimizer_states", []):
        for group in state.get("param_groups", []):
            group["lr"] *= scale
            group["initial_lr"] = group.get("initial_lr", old) * scale
    for state in checkpoint.get("lr_schedulers", []):
        for key in ("base_lrs", "_last_lr"):
            if key in state:
                state[key] = [value * scale for value in state[key]]
