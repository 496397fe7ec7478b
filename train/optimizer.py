"""AdamW with warmup then linear or cosine decay, global-norm clipping and a decay mask."""

from __future__ import annotations

from typing import Any

import jax
import optax

from train.config import OptimConfig

# Leaves by these names are biases and norm parameters: never weight-decayed.
_NO_DECAY_NAMES = ("bias", "scale")


def learning_rate_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """Linear warmup to the peak, then the configured decay to end_learning_rate_ratio * peak."""
    peak, end = cfg.learning_rate, cfg.learning_rate * cfg.end_learning_rate_ratio
    warmup = min(cfg.warmup_steps, total_steps)
    decay_steps = max(total_steps - warmup, 1)
    if cfg.schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.end_learning_rate_ratio)
    elif cfg.schedule == "linear":
        after = optax.linear_schedule(peak, end, decay_steps)
    else:
        after = optax.constant_schedule(peak)
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def decay_mask(params: Any) -> Any:
    """True for weights that get weight decay: everything but biases and norm parameters."""

    def decays(path, _) -> bool:
        names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
        return names[-1] not in _NO_DECAY_NAMES and not any("norm" in n.lower() for n in names)

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(cfg: OptimConfig, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer and its schedule (the schedule is also logged)."""
    schedule = learning_rate_schedule(cfg, total_steps)
    adamw = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                        weight_decay=cfg.weight_decay, mask=decay_mask)
    if cfg.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.clip_norm), adamw), schedule
    return adamw, schedule
