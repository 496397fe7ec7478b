"""Which parameters train: all of them, or, in a model with LoRA adapters, only the adapters.

The params tree splits into a trainable part and a frozen part (nested dicts, each leaf in
exactly one). The optimizer is built over the trainable part only and the train step
differentiates only that part, so frozen base weights get neither gradients nor optimizer
state: LoRA's memory saving, by construction. (optax.multi_transform would keep the frozen
leaves in the state as masked placeholders, which the sharding and checkpoint code would
have to map.) A model without adapters trains everything and its frozen part is empty, so
pretraining's state and steps are unchanged.
"""

from __future__ import annotations

from typing import Any

from model.lora import ADAPTER

Params = dict[str, Any]


def has_adapters(params: Params) -> bool:
    """Whether any subtree of the params is a LoRA adapter."""
    return any(key == ADAPTER or (isinstance(value, dict) and has_adapters(value)) for key, value in params.items())


def split_trainable(params: Params) -> tuple[Params, Params]:
    """(trainable, frozen): the adapters and the rest when there are adapters, else (params, {})."""
    if not has_adapters(params):
        return params, {}
    return _pick(params, adapters=True), _pick(params, adapters=False)


def trainable_part(params: Params) -> Params:
    """The part of a params-shaped tree (values, shapes or shardings) that the optimizer sees."""
    return split_trainable(params)[0]


def join(trainable: Params, frozen: Params) -> Params:
    """The whole params tree back from its two parts."""
    if not frozen:
        return trainable
    merged = dict(frozen)
    for key, value in trainable.items():
        merged[key] = join(value, frozen[key]) if key in frozen else value
    return merged


def _pick(tree: Params, adapters: bool, inside: bool = False) -> Params:
    """The leaves of `tree` that are (adapters=True) or are not inside an adapter, same nesting."""
    picked = {}
    for key, value in tree.items():
        within = inside or key == ADAPTER
        if isinstance(value, dict):
            sub = _pick(value, adapters, within)
            if sub:
                picked[key] = sub
        elif within == adapters:
            picked[key] = value
    return picked
