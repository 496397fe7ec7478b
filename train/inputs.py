"""What the jitted steps consume: the prepared data of a config, and its masking spec."""

from __future__ import annotations

import pathlib

from jax.sharding import Mesh

from data.builtin_corpus import default_cache_dir
from data.packing import PackedRows
from data.chat_template import DEFAULT_TEMPLATE, ChatTemplate, load_template, special_tokens, workdir_template, \
    write_template
from data.pipeline import PreparedData, prepare
from data.sft_examples import Fields, prepare_sft
from data.tokenizer import open_tokenizer, tokenizer_file
from train.config import Config, ConfigError
from train.masking import MaskingSpec, budget_for_mesh, prediction_budget


def prepare_data(config: Config, workdir: pathlib.Path) -> PreparedData:
    """The tokenizer, token store and packed rows for this config (built once, then reused)."""
    d = config.data
    if d.format == "sft":
        return prepare_sft_data(config, workdir)
    cache_dir = pathlib.Path(d.cache_dir) if d.cache_dir else default_cache_dir()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"data.cache_dir={str(cache_dir)!r} cannot be created ({e.strerror or e}); "
                          "set --config.data.cache_dir or $MESHLM_CACHE to a writable directory") from None
    return prepare(workdir, d.source, seq_len=d.seq_len, vocab_size=config.model.vocab_size,
                   tokenizer_type=d.tokenizer_type, text_field=d.text_field, tfds_data_dir=d.tfds_data_dir,
                   cache_dir=cache_dir, max_corpus_bytes=d.max_corpus_bytes or None)


def prepare_sft_data(config: Config, workdir: pathlib.Path) -> PreparedData:
    """Fine-tuning rows (loss on the responses) with the workdir's tokenizer and chat template."""
    d = config.data
    path = tokenizer_file(workdir)
    if path is None:
        raise ConfigError(f"data.format=sft needs the tokenizer of the model being fine-tuned in {workdir}; "
                          "fine-tune with --init_from=PRETRAINED_WORKDIR (its tokenizer is copied)")
    tokenizer = open_tokenizer(path)
    return prepare_sft(workdir, d.source, tokenizer=tokenizer, template=chat_template(config, workdir, tokenizer),
                       seq_len=d.seq_len, fields=Fields(d.prompt_field, d.response_field, d.messages_field),
                       tfds_data_dir=d.tfds_data_dir)


def chat_template(config: Config, workdir: pathlib.Path, tokenizer) -> ChatTemplate:
    """The run's chat template: data.chat_template's file, else the workdir's, else meshlm's default.

    It is kept in the workdir (chat_template.jinja), where decode --chat and export read it.
    """
    kept = workdir_template(workdir)
    if config.data.chat_template:
        text, name = load_template(config.data.chat_template), f"chat template {config.data.chat_template}"
    elif kept is not None:
        text, name = kept, f"chat template {workdir / 'chat_template.jinja'}"
    else:
        text, name = DEFAULT_TEMPLATE, "meshlm's default chat template"
    template = ChatTemplate(text, special_tokens(tokenizer), name)  # a bad file fails here, before it is kept
    if text != kept:
        write_template(workdir, text)
    return template


def masking_spec(config: Config, data: PreparedData, mesh: Mesh) -> MaskingSpec:
    """BERT masking over this tokenizer's ids, with a per-row prediction budget."""
    tok, d = data.tokenizer, config.data
    if tok.mask_id is None:
        raise ConfigError(f"tokenizer {tok.path} has no mask token; masked-LM training (model.arch=bert) needs one")
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
                f"(the tokenizer or the corpus changed); restore the original {data.tokenizer.path.name} "
                "or use a new --workdir")


def check_documents_per_row(data: PreparedData, bound: int) -> None:
    """cuDNN attention is built for at most `bound` documents per row: refuses rows with more.

    A row's segment ids count its documents 1, 2, ..., so the largest id is the most any
    row holds; one pass over the (memory-mapped) ids, once per run.
    """
    for split, rows in (("train", data.train), ("validation", data.validation)):
        most = _most_documents(rows)
        if most > bound:
            raise ConfigError(
                f"model.attention_impl runs cuDNN, built for model.max_segments_per_row={bound} documents a "
                f"row, but {split} rows hold up to {most}; accepted: --config.model.max_segments_per_row={most} "
                "(or more), or attention_impl=xla")


def _most_documents(rows: PackedRows) -> int:
    return int(rows.segment_ids.max()) if rows.num_rows else 0
