"""What the jitted steps consume: the prepared data of a config, and its masking spec."""

from __future__ import annotations

import os
import pathlib

from jax.sharding import Mesh

from data.sources import parse_source
from data.store import PreparedData, prepare_builtin, prepare_source, prepare_store
from train.config import Config, ConfigError
from train.masking import MaskingSpec, budget_for_mesh, prediction_budget


def default_cache_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("MESHLM_CACHE", pathlib.Path.home() / ".cache" / "meshlm"))


def prepare_data(config: Config, workdir: pathlib.Path) -> PreparedData:
    """The corpus, tokenizer and packed rows for this config (built once, then reused)."""
    d = config.data
    cache_dir = pathlib.Path(d.cache_dir) if d.cache_dir else default_cache_dir()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"data.cache_dir={str(cache_dir)!r} cannot be created ({e.strerror or e}); "
                          "set --config.data.cache_dir or $MESHLM_CACHE to a writable directory") from None
    spec = parse_source(d.source)
    if spec.kind == "store":
        return prepare_store(workdir, spec.path, seq_len=d.seq_len,
                             vocab_size=config.model.vocab_size)
    if spec.kind != "builtin":
        return prepare_source(workdir, spec, seq_len=d.seq_len, vocab_size=config.model.vocab_size,
                              model_type=d.tokenizer_type, text_field=d.text_field,
                              tfds_data_dir=d.tfds_data_dir)
    return prepare_builtin(
        workdir, cache_dir=cache_dir, seq_len=d.seq_len, vocab_size=config.model.vocab_size,
        model_type=d.tokenizer_type, max_bytes=d.max_corpus_bytes or None)


def masking_spec(config: Config, data: PreparedData, mesh: Mesh) -> MaskingSpec:
    """BERT masking over this tokenizer's ids, with a per-row prediction budget."""
    tok, d = data.tokenizer, config.data
    return MaskingSpec(
        mask_id=tok.mask_id, vocab_size=config.model.vocab_size,
        special_ids=tuple(int(i) for i in tok.special_ids()), probability=d.mlm_probability,
        mask_ratio=d.mask_token_ratio, random_ratio=d.random_token_ratio,
        word_start_table=tok.word_start_table() if d.whole_word_masking else None,
        max_predictions=budget_for_mesh(prediction_budget(d.seq_len, d.mlm_probability), dict(mesh.shape)))


def data_identity(data: PreparedData) -> dict[str, str]:
    """What a checkpoint records of its data, so a resume or a reader can check it."""
    return {"tokenizer_sha256": data.tokenizer.sha256(), "data_key": data.key}


def check_same_data(saved: dict, data: PreparedData, what: str) -> None:
    """Refuses to pair a checkpoint with another tokenizer or other packed rows."""
    now = data_identity(data)
    for key, value in now.items():
        if key in saved and saved[key] != value:
            raise ConfigError(
                f"{what} was trained with {key}={saved[key]}, but this workdir now has {value} "
                "(tokenizer.model or the corpus changed); restore the original tokenizer.model "
                "or use a new --workdir")
