"""The config schema: typed dataclasses, loaded from configs/<name>.py and overridden by flags.

A config file defines `get_config() -> Config`. Flags `--config.a.b=value` override any
field; the value is parsed by the field's type. Unknown keys and bad values raise
`ConfigError` with one line naming the key or value and what is accepted, before any
device work.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import typing
from typing import Any

from data import remote
from data.documents import DataError
from data.sources import parse_source
from model.config import ATTENTION_IMPLS, LoraConfig, ModelConfig, model_misfit

__all__ = [
    "Config", "ConfigError", "DataConfig", "LoraConfig", "MESH_AXES", "MeshConfig", "ModelConfig", "OptimConfig",
    "TaskConfig", "TrainConfig", "apply_override", "load_config", "validate",
]


class ConfigError(ValueError):
    """A user-facing config mistake; its message is one line."""


@dataclasses.dataclass
class DataConfig:
    """Where text comes from, how it is tokenized, packed and masked."""

    source: str = "builtin"  # builtin | files:<glob>[,...] | tfds:<name>[:<split>] | store:<dir>
    text_field: str = "text"  # files:/tfds: sources: the JSONL key or TFDS feature with the text
    tfds_data_dir: str = ""  # tfds: sources: data_dir (local or a bucket); "" is TFDS's default
    cache_dir: str = ""  # built corpora; "" means $MESHLM_CACHE or ~/.cache/meshlm
    max_corpus_bytes: int = 0  # 0: the whole built-in corpus; else a prefix (quick runs)
    tokenizer_type: str = "unigram"
    seq_len: int = 128  # packed row length, at most model.max_len
    mlm_probability: float = 0.15
    mask_token_ratio: float = 0.8  # of the chosen tokens: [MASK]
    random_token_ratio: float = 0.1  # of the chosen tokens: a random token; the rest kept
    whole_word_masking: bool = False
    # format=sft: records of prompt/response or chat messages, rendered by a chat template into
    # [CLS] ... [SEP] examples whose loss covers the responses only (data/sft_examples.py).
    format: str = "text"  # text (documents) | sft (files:*.jsonl or tfds: records)
    prompt_field: str = "prompt"  # sft: a record's prompt ...
    response_field: str = "response"  # ... and response, or instead
    messages_field: str = "messages"  # a list of {"role", "content"} (system, user, assistant)
    chat_template: str = ""  # sft: a Jinja chat template file; "" keeps the workdir's, else meshlm's default


@dataclasses.dataclass
class OptimConfig:
    """AdamW with warmup then decay, and global-norm clipping."""

    learning_rate: float = 1e-3  # peak
    schedule: str = "linear"  # after warmup: linear | cosine | constant
    warmup_steps: int = 100
    end_learning_rate_ratio: float = 0.0  # final rate as a fraction of the peak
    weight_decay: float = 0.01  # not applied to biases or norm parameters
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-6
    clip_norm: float = 1.0  # global gradient norm; 0 disables


@dataclasses.dataclass
class TrainConfig:
    """Length of the run and how often it logs, evaluates and checkpoints."""

    steps: int = 1000
    batch_size: int = 32  # global rows per step
    seed: int = 0
    log_every: int = 50
    eval_every: int = 500  # and at the end; 0 evaluates only at the end
    eval_batches: int = 20  # 0: the whole validation split
    checkpoint_every: int = 500  # and at the end
    keep_checkpoints: int = 3
    progress_bar: bool = True  # only when stdout is a terminal
    peak_flops_per_device: float = 0.0  # for MFU; 0 looks the chip up (train/flops.py)
    profile_start: int = 0  # first step of a jax.profiler trace into workdir/profile
    profile_steps: int = 0  # steps traced; 0: no trace
    keep_best_metric: str = ""  # also keep the best checkpoint by this eval metric; "" keeps only the last
    keep_best_mode: str = "auto"  # auto: min for loss/perplexity, max for accuracy | min | max
    skip_nonfinite: bool = False  # skip (and count) updates with a non-finite loss or gradient instead of stopping


POOLINGS = ("cls", "mean")  # TaskConfig.pooling


@dataclasses.dataclass
class TaskConfig:
    """Where a fine-tuning task's labelled examples come from and how the head is trained."""

    train_path: str = ""  # .csv (with a header) or .jsonl; "" when tfds_name is set
    validation_path: str = ""
    tfds_name: str = ""  # e.g. glue/sst2, read with tfds.data_source (prepared, no download)
    tfds_data_dir: str = ""
    train_split: str = "train"
    validation_split: str = "validation"
    text_field: str = "text"
    text_pair_field: str = ""  # set for sentence pairs: [CLS] a [SEP] b [SEP]
    label_field: str = "label"
    pooling: str = "cls"  # cls: BERT's pooler on [CLS] | mean: over non-padding tokens
    classifier_dropout: float = 0.1
    epochs: int = 3
    body_learning_rate_ratio: float = 1.0  # encoder's rate as a fraction of optim.learning_rate


# The mesh axes, in the order `mesh.shape` lists their sizes (train/mesh.py says what each
# splits, and lays them over the devices in its own order). A new axis goes at the end:
# shapes written before it existed list fewer sizes, and the axes they leave out have size 1
# (a 3-entry shape is (data, fsdp, tensor)).
MESH_AXES = ("data", "fsdp", "tensor", "sequence", "dcn")
MIN_MESH_AXES = 3  # the axes every shape lists


@dataclasses.dataclass
class MeshConfig:
    """The device mesh: sizes of (data, fsdp, tensor[, sequence[, dcn]]); one entry may be -1 to take the rest.

    dcn is the number of TPU slices a multi-slice job spans (data parallel over them).
    """

    shape: tuple[int, ...] = (1, 1, 1)

    def sizes(self) -> dict[str, int]:
        """Each mesh axis's size (-1 kept), the axes a shorter shape leaves out at 1."""
        return dict(zip(MESH_AXES, tuple(self.shape) + (1,) * (len(MESH_AXES) - len(self.shape))))


@dataclasses.dataclass
class Config:
    """Everything a run needs; saved as JSON in the workdir and in checkpoints."""

    name: str = "unnamed"
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    mesh: MeshConfig = dataclasses.field(default_factory=MeshConfig)
    task: TaskConfig = dataclasses.field(default_factory=TaskConfig)  # fine-tuning only

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


def load_config(path: str, overrides: typing.Sequence[str] = ()) -> Config:
    """Loads `get_config()` from a config file (or a workdir's config.json), applies `a.b=value` overrides, validates."""
    file = remote.as_path(path)  # a workdir's config.json may be in a bucket
    if not file.is_file():
        raise ConfigError(f"config file '{path}' not found; pass e.g. --config=configs/bert_tiny.py")
    if file.suffix == ".json":
        try:
            config = config_from_json(file.read_text())
        except (ValueError, TypeError) as e:
            raise ConfigError(f"config file '{path}' is not a meshlm config.json: {e}") from None
        return _overridden(config, overrides)
    spec = importlib.util.spec_from_file_location(f"meshlm_config_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # a user's file: report, do not dump a traceback
        raise ConfigError(f"config file '{path}' failed to load: {type(e).__name__}: {e}") from e
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file '{path}' has no get_config() function")
    config = module.get_config()
    if not isinstance(config, Config):
        raise ConfigError(f"get_config() in '{path}' returned {type(config).__name__}, not train.config.Config")
    return _overridden(config, overrides)


def _overridden(config: Config, overrides: typing.Sequence[str]) -> Config:
    """config with `a.b=value` overrides applied, validated."""
    for override in overrides:
        key, sep, value = override.partition("=")
        if not sep:
            raise ConfigError(f"override '{override}' needs the form key=value, e.g. train.steps=100")
        apply_override(config, key, value)
    validate(config)
    return config


def apply_override(config: Config, key: str, text: str) -> None:
    """Sets the field at dotted `key` to `text` parsed by the field's declared type."""
    holder: Any = config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(holder)}
        where = ".".join(parts[:depth]) or "config"
        if part not in fields:
            raise ConfigError(
                f"unknown config key '{key}'; accepted keys in {where}: {', '.join(sorted(fields))}")
        if depth == len(parts) - 1:
            field_type = typing.get_type_hints(type(holder))[part]
            if dataclasses.is_dataclass(field_type):
                raise ConfigError(f"config key '{key}' is a section; set one of its fields, e.g. {key}.{dataclasses.fields(field_type)[0].name}=...")
            setattr(holder, part, _parse(key, text, field_type))
            return
        holder = getattr(holder, part)
        if not dataclasses.is_dataclass(holder):
            raise ConfigError(f"unknown config key '{key}': '{'.'.join(parts[:depth + 1])}' is not a section")


def _parse(key: str, text: str, field_type: Any) -> Any:
    """Parses a flag value as int, float, bool, str or tuple of ints."""
    if field_type is bool:
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ConfigError(f"config key '{key}' got '{text}'; accepted: true or false")
    if field_type is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"config key '{key}' got '{text}'; accepted: an integer") from None
    if field_type is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"config key '{key}' got '{text}'; accepted: a number") from None
    if field_type is str:
        return text
    if typing.get_origin(field_type) is tuple:
        items = [t for t in text.strip().strip("()[]").replace(" ", "").split(",") if t]
        if typing.get_args(field_type)[0] is str:
            return tuple(t.strip("'\"") for t in items)
        try:
            return tuple(int(t) for t in items)
        except ValueError:
            raise ConfigError(f"config key '{key}' got '{text}'; accepted: integers separated by commas, e.g. 2,2,2") from None
    raise ConfigError(f"config key '{key}' has a type ({field_type}) that flags cannot set")


_CHOICES = {
    "data.tokenizer_type": ("unigram", "bpe", "word", "char"),
    "model.dtype": ("float32", "bfloat16"),
    "model.param_dtype": ("float32", "bfloat16"),
    "model.arch": ("bert", "llama"),
    "model.remat": ("none", "full", "dots"),
    "model.attention_impl": ATTENTION_IMPLS,
    "model.position_init": ("normal", "sinusoidal"),
    "data.format": ("text", "sft"),
    "optim.schedule": ("linear", "cosine", "constant"),
    "train.keep_best_metric": ("", "loss", "accuracy", "perplexity"),
    "train.keep_best_mode": ("auto", "min", "max"),
}


def validate(config: Config) -> None:
    """Checks types, ranges and cross-field rules; raises ConfigError on the first problem."""
    _accept_legacy(config)
    _check_types(config, "")
    for key, accepted in _CHOICES.items():
        value = _get(config, key)
        if value not in accepted:
            raise ConfigError(f"config key '{key}' got '{value}'; accepted: {', '.join(accepted)}")
    m, d, o = config.model, config.data, config.optim
    try:
        source = parse_source(d.source)
    except DataError as e:
        raise ConfigError(f"config key 'data.source': {e}") from None
    if d.format == "sft" and (source.kind not in ("files", "tfds") or m.arch != "llama"):
        raise ConfigError(f"data.format=sft with data.source={d.source} and model.arch={m.arch}; accepted: "
                          "files:<glob of .jsonl> or tfds:<name>[:<split>] records, for model.arch=llama")
    _at_least(config, ["model.vocab_size"], 16)
    _at_least(config, ["model.max_len", "data.seq_len"], 4)
    _at_least(config, ["model.hidden", "model.num_layers", "model.num_heads", "model.mlp_dim", "model.max_segments_per_row",
                       "train.steps", "train.batch_size", "train.log_every",
                       "train.checkpoint_every", "train.keep_checkpoints"], 1)
    _at_least(config, ["model.head_dim", "optim.warmup_steps", "train.eval_every",
                       "train.eval_batches", "data.max_corpus_bytes", "train.profile_start", "train.profile_steps", "optim.weight_decay",
                       "optim.clip_norm", "optim.learning_rate", "model.init_std", "train.seed",
                       "train.peak_flops_per_device"], 0)
    for key in ("model.dropout", "model.attention_dropout", "optim.b1", "optim.b2"):
        value = _get(config, key)
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"config key '{key}' got {value}; accepted: a number in [0, 1)")
    if not 0.0 <= o.end_learning_rate_ratio <= 1.0:
        raise ConfigError(f"config key 'optim.end_learning_rate_ratio' got {o.end_learning_rate_ratio}; "
                          "accepted: a number in [0, 1]")
    if not 0.0 < d.mlm_probability < 1.0:
        raise ConfigError(f"config key 'data.mlm_probability' got {d.mlm_probability}; accepted: a number in (0, 1)")
    if d.mask_token_ratio < 0 or d.random_token_ratio < 0 or d.mask_token_ratio + d.random_token_ratio > 1:
        raise ConfigError(
            f"data.mask_token_ratio={d.mask_token_ratio} and data.random_token_ratio={d.random_token_ratio}; "
            "accepted: non-negative with a sum of at most 1")
    if not m.head_dim and m.hidden % m.num_heads:
        raise ConfigError(f"model.hidden={m.hidden} is not divisible by model.num_heads={m.num_heads}; set model.head_dim or change either")
    misfit = model_misfit(m)
    if misfit:
        raise ConfigError(misfit)
    if d.seq_len > m.max_len:
        raise ConfigError(f"data.seq_len={d.seq_len} exceeds model.max_len={m.max_len}; accepted: data.seq_len <= model.max_len")
    if o.eps <= 0:
        raise ConfigError(f"config key 'optim.eps' got {o.eps}; accepted: a number > 0")
    t = config.train
    if t.keep_best_metric and not (t.eval_every and t.checkpoint_every % t.eval_every == 0):
        raise ConfigError(f"train.keep_best_metric='{t.keep_best_metric}' needs an eval at every checkpoint; "
                          f"accepted: train.eval_every a divisor of train.checkpoint_every={t.checkpoint_every}")
    shape = config.mesh.shape
    if not MIN_MESH_AXES <= len(shape) <= len(MESH_AXES) or any(s == 0 or s < -1 for s in shape) or shape.count(-1) > 1:
        raise ConfigError(
            f"mesh.shape={shape}; accepted: {MIN_MESH_AXES} to {len(MESH_AXES)} sizes for ({', '.join(MESH_AXES)}), "
            "each >= 1, at most one -1")
    sequence = config.mesh.sizes()["sequence"]
    if sequence > 1 and d.seq_len % sequence:
        raise ConfigError(f"data.seq_len={d.seq_len} does not divide by the mesh's sequence={sequence}; "
                          "accepted: a sequence axis that divides the row length")


def _check_types(obj: Any, prefix: str) -> None:
    """Catches wrong types written in a config file (flags are parsed by type already)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        key, value, want = f"{prefix}{f.name}", getattr(obj, f.name), hints[f.name]
        if dataclasses.is_dataclass(want):
            if not isinstance(value, want):
                raise ConfigError(f"config key '{key}' holds {type(value).__name__}; accepted: {want.__name__}")
            _check_types(value, key + ".")
            continue
        if typing.get_origin(want) is tuple:
            item = typing.get_args(want)[0]
            ok = isinstance(value, (tuple, list)) and all(type(v) is item for v in value)
        elif want is float:
            ok = type(value) in (int, float)
        else:
            ok = type(value) is want
        if not ok:
            name = ("integers" if typing.get_args(want)[0] is int else "strings") if typing.get_origin(want) is tuple \
                else getattr(want, "__name__", str(want))
            raise ConfigError(f"config key '{key}' got {value!r} ({type(value).__name__}); accepted: {name}")
        if typing.get_origin(want) is tuple:
            setattr(obj, f.name, tuple(value))


def _accept_legacy(config: Config) -> None:
    """Older configs and checkpoints say model.remat=True/False: read them as full/none."""
    remat = config.model.remat
    if isinstance(remat, bool) or remat in ("true", "false"):
        config.model.remat = "full" if remat in (True, "true") else "none"


def _get(config: Config, key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _at_least(config: Config, keys: list[str], low: float) -> None:
    for key in keys:
        value = _get(config, key)
        if value < low:
            raise ConfigError(f"config key '{key}' got {value}; accepted: a number >= {low}")


def config_from_json(text: str) -> Config:
    """Rebuilds a Config saved by `Config.to_json` (checkpoints, workdirs)."""
    raw = json.loads(text)

    def build(cls: type, values: dict) -> Any:
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in values:
                continue  # a field added since the file was written keeps its default
            value = values[f.name]
            if dataclasses.is_dataclass(hints[f.name]):
                value = build(hints[f.name], value)
            elif typing.get_origin(hints[f.name]) is tuple:
                value = tuple(value)
            kwargs[f.name] = value
        return cls(**kwargs)

    config = build(Config, raw)
    _accept_legacy(config)
    return config

