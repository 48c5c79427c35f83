"""Recipes: YAML -> typed, frozen dataclasses, validated once.

A recipe file describes one experiment. `load()` reads it with a safe YAML loader, applies
`--set section.key=value` overrides, checks every key and value (unknown keys get a close-match
suggestion), resolves relative paths against the recipe's folder and returns a `Recipe`.
`dump()` writes the fully resolved recipe, which `load()` reads back unchanged.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from nmt.errors import NmtError
from nmt.utils.files import atomic_write


@dataclass(frozen=True)
class DataConfig:
    src_lang: str = "en"
    """Source language: the suffix of the source files."""
    tgt_lang: str = "de"
    """Target language: the suffix of the target files."""
    train: str = ""
    """Training file prefix (required): `{train}.{src_lang}` and `{train}.{tgt_lang}` are read."""
    valid: str = ""
    """Validation file prefix (required), read as `train` is."""
    test: str | None = None
    """Test file prefix, for your own scripts (nmt itself never reads it)."""
    prepared_dir: str | None = None
    """Where `nmt preprocess` writes the binarized data; default: `<run_dir>/prepared`."""

    def validate(self) -> None:
        _require(self.src_lang != self.tgt_lang, "data.tgt_lang", "must differ from data.src_lang")
        _require(bool(self.train), "data.train", "is required (a file prefix such as data/train)")
        _require(bool(self.valid), "data.valid", "is required (a file prefix such as data/valid)")


@dataclass(frozen=True)
class TokenizerConfig:
    type: Literal["unigram", "bpe"] = "unigram"
    """SentencePiece model type: `unigram` or `bpe`."""
    joint: bool = True
    """One vocabulary for both languages."""
    vocab_size: int = 8000
    """Pieces per SentencePiece model."""
    character_coverage: float = 1.0
    """SentencePiece's character coverage (1.0 keeps every character; 0.9995 suits large
    alphabets)."""
    input_sentence_size: int = 1_000_000
    """SentencePiece trains on at most this many sentences (sampled), keeping memory bounded."""
    src_model: str | None = None
    """Reuse this SentencePiece model instead of training one (alone when `joint`)."""
    tgt_model: str | None = None
    """Reuse this target SentencePiece model (with `src_model`, when not `joint`)."""

    def validate(self) -> None:
        _require(self.vocab_size >= 16, "tokenizer.vocab_size", "must be at least 16")
        _require(
            0.9 <= self.character_coverage <= 1.0,
            "tokenizer.character_coverage",
            "must be between 0.9 and 1.0",
        )
        _require(self.input_sentence_size > 0, "tokenizer.input_sentence_size", "must be > 0")
        if not self.joint and (self.src_model is None) != (self.tgt_model is None):
            raise NmtError(
                "tokenizer.src_model and tokenizer.tgt_model: give both or neither "
                "when tokenizer.joint is false"
            )


@dataclass(frozen=True)
class FilterConfig:
    max_len: int = 100
    """Drop training pairs with more subword tokens than this on either side."""
    max_ratio: float = 3.0
    """Drop training pairs whose longer side has more than this many times the tokens of the
    shorter."""
    dedup: bool = False
    """Drop exact duplicate training pairs."""

    def validate(self) -> None:
        _require(self.max_len >= 1, "filter.max_len", "must be >= 1")
        _require(self.max_ratio >= 1.0, "filter.max_ratio", "must be >= 1.0")


AttentionKind = Literal["multihead", "luong", "bahdanau"]
ATTENTION_SITES = ("encoder", "decoder", "cross")


@dataclass(frozen=True)
class AttentionSites:
    """The mechanism of each attention site: encoder self-, decoder self- and cross-attention."""

    encoder: AttentionKind = "multihead"
    """Encoder self-attention."""
    decoder: AttentionKind = "multihead"
    """Decoder self-attention."""
    cross: AttentionKind = "multihead"
    """Decoder-to-encoder (cross-) attention."""


@dataclass(frozen=True)
class ModelConfig:
    arch: Literal["transformer", "rnn"] = "transformer"
    """`transformer`, or `rnn`: a bidirectional recurrent encoder and an attentional recurrent
    decoder, Bahdanau's or Luong's."""
    d_model: int = 256
    """Model width (for `rnn`, the embedding size)."""
    heads: int = 4
    """Attention heads (`transformer`)."""
    ff_dim: int = 1024
    """Feed-forward inner size (`transformer`)."""
    encoder_layers: int = 3
    """Encoder depth."""
    decoder_layers: int = 3
    """Decoder depth (`rnn` with `luong`: equal to `encoder_layers`)."""
    dropout: float = 0.1
    """Dropout on embeddings and between sublayers (for `rnn`: embeddings, between stacked
    layers, before the output layer)."""
    attention_dropout: float = 0.0
    """Dropout on attention weights (`transformer`)."""
    activation_dropout: float = 0.0
    """Dropout inside the feed-forward block (`transformer`)."""
    activation: Literal["relu", "gelu", "silu"] = "relu"
    """Feed-forward activation: `relu`, `gelu` or `silu` (swish, as Marian's models use;
    `transformer`)."""
    norm: Literal["pre", "post"] = "pre"
    """`pre` or `post` layer norm (`transformer`)."""
    attention: AttentionKind | AttentionSites = "multihead"
    """`multihead`, `luong` or `bahdanau` at every site, or a mapping per site: `{encoder:
    multihead, decoder: multihead, cross: bahdanau}`. For `rnn`: `bahdanau` or `luong`."""
    luong_score: Literal["dot", "general", "concat"] = "general"
    """Luong's score: `dot` (qᵀk), `general` (qᵀW k), or `concat` (vᵀ tanh(W [q; k]); `rnn`
    only)."""
    luong_scaled: bool = False
    """Divide Luong's scores by √d_head, as multi-head attention does (the paper does not)."""
    share_all_embeddings: bool = True
    """With a joint vocabulary, tie the encoder embedding too (encoder, decoder and output
    projection share one matrix)."""
    max_positions: int = 1024
    """Longest sequence, in tokens, the model accepts."""
    output_bias: bool = False
    """A fixed, untrained bias added to the output logits (`transformer`): Marian's
    `final_logits_bias`, set by `nmt import`."""
    rnn_type: Literal["gru", "lstm"] = "gru"
    """`rnn`: `gru` or `lstm` cells."""
    hidden_size: int = 512
    """`rnn`: the decoder's hidden size; each encoder direction has half of it."""
    input_feeding: bool = True
    """`rnn` with `luong` attention: feed h̃_{t-1} into the next step."""

    def validate(self) -> None:
        for name in ("d_model", "encoder_layers", "decoder_layers"):
            _require(getattr(self, name) >= 1, f"model.{name}", "must be >= 1")
        _require(0.0 <= self.dropout < 1.0, "model.dropout", "must be in [0, 1)")
        _require(self.max_positions >= 8, "model.max_positions", "must be >= 8")
        if self.arch == "rnn":
            self._validate_rnn()
        else:
            self._validate_transformer()

    def _validate_transformer(self) -> None:
        for name in ("heads", "ff_dim"):
            _require(getattr(self, name) >= 1, f"model.{name}", "must be >= 1")
        _require(
            self.d_model % self.heads == 0,
            "model.d_model",
            f"({self.d_model}) must be divisible by model.heads ({self.heads})",
        )
        for name in ("attention_dropout", "activation_dropout"):
            _require(0.0 <= getattr(self, name) < 1.0, f"model.{name}", "must be in [0, 1)")
        _require(self.luong_score != "concat", "model.luong_score", "concat is for arch rnn only")
        self._keep_defaults(("rnn_type", "hidden_size", "input_feeding"), "rnn")

    def _validate_rnn(self) -> None:
        _require(
            self.attention in ("bahdanau", "luong"),
            "model.attention",
            f"must be bahdanau or luong for model.arch rnn, got {_attention_text(self.attention)}",
        )
        _require(
            self.hidden_size >= 2 and self.hidden_size % 2 == 0,
            "model.hidden_size",
            "must be even and >= 2 (each encoder direction has half)",
        )
        if self.attention == "luong":
            _require(
                self.decoder_layers == self.encoder_layers,
                "model.decoder_layers",
                "must equal model.encoder_layers with Luong attention (each decoder layer starts "
                "from the final state of its encoder layer)",
            )
        else:
            _require(self.input_feeding, "model.input_feeding", "applies to Luong attention only")
        self._keep_defaults(
            (
                "heads",
                "ff_dim",
                "attention_dropout",
                "activation_dropout",
                "activation",
                "norm",
                "luong_scaled",
                "output_bias",
            ),
            "transformer",
        )

    def _keep_defaults(self, names: tuple[str, ...], arch: str) -> None:
        """Refuse keys of the other architecture set to anything but their defaults."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for name in names:
            _require(
                getattr(self, name) == defaults[name],
                f"model.{name}",
                f"applies to model.arch {arch} only; remove it, or --set model.{name}=null",
            )

    def attention_at(self, site: str) -> str:
        """The mechanism used at `site` (encoder, decoder or cross)."""
        if isinstance(self.attention, str):
            return self.attention
        return getattr(self.attention, site)


@dataclass(frozen=True)
class TrainConfig:
    max_tokens: int = 4096
    """Tokens per batch, padding included (the larger of the source and target side)."""
    pad_multiple: int = 1
    """Pad each batch's source and target lengths up to a multiple of this (8 or 16 on a GPU:
    fewer distinct shapes for compiled kernels and CUDA graphs); max_tokens counts the padding.
    The loss is the same."""
    accum_steps: int = 1
    """Batches per optimizer update (gradient accumulation)."""
    lr: float = 5e-4
    """Peak learning rate, reached at the end of the warm-up."""
    warmup_steps: int = 4000
    """Updates of linear warm-up."""
    schedule: Literal["inverse_sqrt", "linear", "cosine"] = "inverse_sqrt"
    """After the warm-up: `inverse_sqrt` (lr·√(warmup/step), never ends), or `linear` / `cosine`
    decay to `min_lr` at `max_steps` (or where `max_time` is expected to stop the run, when
    that comes first)."""
    min_lr: float = 0.0
    """Where `linear` and `cosine` decay end."""
    betas: tuple[float, float] = (0.9, 0.98)
    """Adam's betas."""
    eps: float = 1e-9
    """Adam's epsilon."""
    weight_decay: float = 0.0
    """Adam's L2 weight decay (coupled, as torch.optim.Adam applies it)."""
    clip_norm: float = 1.0
    """Gradient norm clipping; 0 disables it."""
    label_smoothing: float = 0.1
    """Label smoothing of the cross-entropy."""
    subword_alpha: float = 0.0
    """Subword regularisation: every epoch, each training sentence is segmented anew by
    SentencePiece's sampling (Kudo, 2018): a unigram model samples with this smoothing
    (0.1–0.5 are usual), a BPE model drops merges with this probability (BPE-dropout; 0.1). 0
    keeps the one best segmentation; validation and translation always use it."""
    subword_nbest: int = -1
    """A unigram model samples among its N best segmentations (-1: all of them)."""
    max_steps: int = 100_000
    """Stop after this many updates."""
    max_epochs: int = 100
    """Stop after this many epochs."""
    max_time: float | str | None = None
    """A wall-clock budget for the whole `nmt train`, resumes included (`2h`, `90m`, `1h30m`,
    `45s` or seconds): training stops in time to validate, save and average within it."""
    patience: int = 10
    """Stop after this many validations without a better BLEU; 0: never."""
    keep_last: int = 0
    """Also keep `step_<N>.pt` (weights only) of the last N validations, for `nmt average`."""
    average_last: int = 0
    """At the end, average the last N step checkpoints into `averaged.pt` and validate it; `nmt
    translate RUN_DIR` then uses whichever of `best.pt` and `averaged.pt` validated higher."""
    valid_every: int = 1000
    """Validate (and save) every this many updates."""
    log_every: int = 50
    """Log training loss, learning rate and speed every this many updates."""
    valid_search: Literal["greedy", "beam"] = "greedy"
    """Search used for validation BLEU: `greedy` or `beam`."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """`auto` (bf16 or fp16 on a GPU, fp32 on a CPU), `fp32`, `bf16` or `fp16`."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`auto`, `cpu` or `cuda`."""
    threads: int = 0
    """CPU threads for torch; 0 keeps torch's default."""
    tf32: bool = True
    """TF32 matmuls on GPUs that have them (Ampere and newer)."""
    compile: bool = False
    """`torch.compile` the training step's model (dynamic shapes; with `pad_multiple` fewer of
    them); if compiling fails, training goes on eagerly after one warning."""
    cuda_graphs: bool = False
    """With `compile` on a GPU: record each batch shape's forward and backward as a CUDA graph
    and replay it (torch.compile's "reduce-overhead"), one launch instead of hundreds, for
    small models whose updates wait on the host. The loss then projects every target position
    (padding ignored) so that shapes repeat; use with `pad_multiple` 8 or 16. On a CPU the
    step is compiled without graphs."""
    init_from: str | None = None
    """Fine-tuning: start from this checkpoint's weights (same architecture; dropout may differ)
    with a fresh optimizer and schedule; `nmt preprocess` then takes its SentencePiece models."""
    tensorboard: bool = False
    """Also write the logged numbers to `run_dir/tensorboard` (`pip install 'nmt[tensorboard]'`)."""

    def validate(self) -> None:
        for name in (
            "max_tokens", "pad_multiple", "accum_steps", "max_steps", "max_epochs", "valid_every"
        ):  # fmt: skip
            _require(getattr(self, name) >= 1, f"train.{name}", "must be >= 1")
        _require(self.log_every >= 1, "train.log_every", "must be >= 1")
        _require(
            self.compile or not self.cuda_graphs,
            "train.cuda_graphs",
            "needs train.compile: true (the graphs replay the compiled step)",
        )
        _require(self.lr > 0, "train.lr", "must be > 0")
        _require(
            self.warmup_steps >= 1,
            "train.warmup_steps",
            "must be >= 1 (the inverse-square-root schedule divides by it)",
        )
        _require(all(0 <= b < 1 for b in self.betas), "train.betas", "must be in [0, 1)")
        _require(self.clip_norm >= 0, "train.clip_norm", "must be >= 0")
        _require(0 <= self.label_smoothing < 1, "train.label_smoothing", "must be in [0, 1)")
        _require(0 <= self.subword_alpha <= 1, "train.subword_alpha", "must be in [0, 1]")
        _require(
            self.subword_nbest == -1 or self.subword_nbest >= 2,
            "train.subword_nbest",
            "must be -1 (sample among all segmentations) or >= 2",
        )
        _require(self.patience >= 0, "train.patience", "must be >= 0")
        _require(self.keep_last >= 0, "train.keep_last", "must be >= 0")
        _require(self.average_last >= 0, "train.average_last", "must be >= 0")
        _require(0 <= self.min_lr <= self.lr, "train.min_lr", "must be between 0 and train.lr")
        if self.max_time is not None:
            self.max_seconds  # noqa: B018 - parses, or names the key and the format
        _require(self.threads >= 0, "train.threads", "must be >= 0")

    @property
    def max_seconds(self) -> float | None:
        """train.max_time in seconds (None: no budget)."""
        if self.max_time is None:
            return None
        return parse_duration(self.max_time, "train.max_time")

    @property
    def checkpoints_kept(self) -> int:
        """How many step checkpoints to keep: enough for `keep_last` and for `average_last`."""
        return max(self.keep_last, self.average_last)


_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?")


def parse_duration(value: float | str, key: str) -> float:
    """2h, 90m, 1h30m, 45s, 1.5h or a number of seconds -> seconds."""
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = value.strip().lower()
        match = _DURATION.fullmatch(text)
        if _FLOAT.fullmatch(text):
            seconds = float(text)
        elif text and match and any(match.groups()):
            h, m, s = (float(g) if g else 0.0 for g in match.groups())
            seconds = 3600 * h + 60 * m + s
        else:
            raise NmtError(
                f"recipe key '{key}' must be a duration such as 2h, 90m, 1h30m or 45s, "
                f"got {value!r}"
            )
    _require(seconds > 0, key, "must be a positive duration")
    return seconds


@dataclass(frozen=True)
class DecodeConfig:
    method: Literal["beam", "greedy", "sample"] = "beam"
    """`beam`, `greedy` or `sample`."""
    beam_size: int = 5
    """Beam width."""
    length_penalty: float = 1.0
    """GNMT length penalty α: hypotheses rank by log-probability / ((5 + length) / 6)^α; 0 ranks
    by raw log-probability."""
    max_len_a: float = 1.2
    """Output at most `max_len_a` · source length + `max_len_b` tokens."""
    max_len_b: int = 10
    """See `max_len_a`."""
    min_len: int = 0
    """No end of sentence before this many tokens."""
    no_repeat_ngram: int = 0
    """Never repeat an n-gram of this size; 0: off."""
    batch_tokens: int = 4096
    """Source tokens per translation batch."""
    batch_size: int = 0
    """At most this many sentences per translation batch; 0: no limit."""
    temperature: float = 1.0
    """`sample`: softmax temperature."""
    top_k: int = 0
    """`sample`: draw from the k most likely tokens only; 0: all."""
    top_p: float = 1.0
    """`sample`: nucleus sampling, from the smallest set of tokens holding this much probability;
    1: all."""
    sampling_seed: int = 1
    """`sample`: the seed; the same seed gives the same samples."""

    def validate(self) -> None:
        _require(self.beam_size >= 1, "decode.beam_size", "must be >= 1")
        _require(self.length_penalty >= 0, "decode.length_penalty", "must be >= 0")
        _require(self.max_len_a >= 0, "decode.max_len_a", "must be >= 0")
        _require(self.max_len_b >= 1, "decode.max_len_b", "must be >= 1")
        _require(self.batch_tokens >= 1, "decode.batch_tokens", "must be >= 1")
        _require(self.batch_size >= 0, "decode.batch_size", "must be >= 0")
        _require(self.min_len >= 0, "decode.min_len", "must be >= 0")
        _require(self.no_repeat_ngram >= 0, "decode.no_repeat_ngram", "must be >= 0")
        _require(self.temperature > 0, "decode.temperature", "must be > 0")
        _require(self.top_k >= 0, "decode.top_k", "must be >= 0")
        _require(0 < self.top_p <= 1, "decode.top_p", "must be in (0, 1]")


@dataclass(frozen=True)
class Recipe:
    name: str = "experiment"
    """A label for the run."""
    run_dir: str = "runs/experiment"
    """The run folder: prepared data, checkpoints, logs, the resolved recipe."""
    seed: int = 1
    """Seeds SentencePiece sampling, initialisation and batch shuffling."""
    data: DataConfig = field(default_factory=DataConfig)
    """The parallel text."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """The SentencePiece models."""
    filter: FilterConfig = field(default_factory=FilterConfig)
    """Which training pairs `nmt preprocess` keeps."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """The architecture and its sizes."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation, schedule, budgets, checkpoints."""
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    """How `nmt translate` (and validation with beam search) decodes; `nmt tune` writes its
    choice here."""

    @property
    def prepared_dir(self) -> Path:
        return Path(self.data.prepared_dir or Path(self.run_dir) / "prepared")

    def validate(self) -> None:
        _require(bool(self.run_dir), "run_dir", "is required")
        for section in (self.data, self.tokenizer, self.filter, self.model, self.train):
            section.validate()
        self.decode.validate()


# Keys holding paths, resolved against the recipe file's folder.
_PATH_KEYS = {
    ("run_dir",),
    ("data", "train"),
    ("data", "valid"),
    ("data", "test"),
    ("data", "prepared_dir"),
    ("tokenizer", "src_model"),
    ("tokenizer", "tgt_model"),
    ("train", "init_from"),
}


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _attention_text(attention: str | AttentionSites) -> str:
    """model.attention as a recipe writes it: 'luong', or {encoder: ..., decoder: ..., cross: ...}."""
    if isinstance(attention, str):
        return repr(attention)
    sites = ", ".join(f"{site}: {getattr(attention, site)}" for site in ATTENTION_SITES)
    return "{" + sites + "}"


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise NmtError(f"recipe key '{key}' {message}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "a list of " + ", ".join(_type_name(a) for a in typing.get_args(tp))
    if dataclasses.is_dataclass(tp):
        return "a mapping of " + ", ".join(f.name for f in dataclasses.fields(tp))
    return {type(None): "null", int: "an integer", float: "a number", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; returns the value converted (int -> float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except NmtError as e:
                errors.append((option, e))
        # Report the error of the option the value was meant for (a choice, or a mapping).
        for option, error in errors:
            meant = dict if dataclasses.is_dataclass(option) else str
            if typing.get_origin(option) is Literal and isinstance(value, meant):
                raise error
            if meant is dict and isinstance(value, dict):
                raise error
    elif origin is Literal:
        if value in typing.get_args(tp):
            return value
        choices = [str(a) for a in typing.get_args(tp)]
        hint = difflib.get_close_matches(str(value), choices, n=1)
        extra = f" (did you mean '{hint[0]}'?)" if hint else ""
        raise NmtError(f"recipe key '{key}' must be one of {_type_name(tp)}, got {value!r}{extra}")
    elif origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, (list, tuple)) and len(value) == len(args):
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        # 1e3 (a string to YAML 1.1, which wants a dot) or 1000.0: a whole number written
        # otherwise. A quoted "4" stays a string, refused below.
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()) and "e" in value.lower():
            value = float(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        # PyYAML follows YAML 1.1, where 1e-3 (no dot) is a string; users mean a number.
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return _build(tp, value, key)
        raise NmtError(f"recipe key '{key}' must be a mapping of settings, got {value!r}")
    raise NmtError(f"recipe key '{key}' must be {_type_name(tp)}, got {value!r}")


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            hint = (
                difflib.get_close_matches(str(key), names, n=1)
                or [n for n in names if str(key).startswith(n) or n.startswith(str(key))][:1]
            )
            extra = f" (did you mean '{prefix + '.' if prefix else ''}{hint[0]}'?)" if hint else ""
            raise NmtError(f"unknown recipe key '{full}'{extra}")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def _set_override(tree: dict, assignment: str) -> None:
    """Apply one `section.key=value` override; the value is parsed as YAML (so 1e-3 is a number)."""
    if "=" not in assignment:
        raise NmtError(f"--set expects key=value (for example train.lr=0.001), got '{assignment}'")
    dotted, raw = assignment.split("=", 1)
    parts = dotted.strip().split(".")
    if not all(parts):
        raise NmtError(f"--set: bad key '{dotted}'")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise NmtError(f"--set: '{part}' in '{dotted}' is not a section")
        node = child
    node[parts[-1]] = value


def _resolve_paths(tree: dict, base: Path) -> None:
    for keys in _PATH_KEYS:
        node = tree
        for k in keys[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(keys[-1]), str) and node[keys[-1]]:
            node[keys[-1]] = str((base / Path(node[keys[-1]]).expanduser()).resolve())


def read_yaml(path: Path) -> dict:
    """Read a YAML mapping with the safe loader; errors name the file, line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NmtError(f"recipe not found: {path}") from None
    except IsADirectoryError:
        raise NmtError(f"recipe is a folder, not a file: {path}") from None
    except UnicodeDecodeError:
        raise NmtError(f"recipe is not UTF-8 text: {path}") from None
    except OSError as e:
        raise NmtError(f"cannot read recipe {path}: {e.strerror}") from None
    try:
        tree = yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise NmtError(f"invalid YAML in {path}{where}: {e.problem}") from None
    except yaml.YAMLError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NmtError(f"invalid YAML in {path}: {first}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise NmtError(f"recipe {path} must be a mapping of sections (data:, model:, ...)")
    return tree


def from_dict(tree: dict, base_dir: Path | None = None) -> Recipe:
    """Build and validate a Recipe from a plain mapping; relative paths resolve against base_dir."""
    tree = yaml.safe_load(yaml.safe_dump(tree))  # a deep copy of plain data
    if base_dir is not None:
        _resolve_paths(tree, base_dir)
    recipe = _build(Recipe, tree)
    recipe.validate()
    return recipe


def _merge(tree: dict, overrides: dict) -> None:
    for key, value in overrides.items():
        if value is None:  # --set key=null: back to the key's default
            tree.pop(key, None)
        elif isinstance(value, dict) and isinstance(tree.get(key), dict):
            _merge(tree[key], value)
        else:
            tree[key] = value


def load(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Load a recipe file, apply `key=value` overrides, validate, resolve paths.

    Paths in the file are relative to the file's folder; paths given with --set are relative
    to the current folder, like any other path typed on the command line.
    """
    path = Path(path)
    tree = read_yaml(path)
    _resolve_paths(tree, path.resolve().parent)
    changes: dict = {}
    for assignment in overrides or []:
        _set_override(changes, assignment)
    _resolve_paths(changes, Path.cwd())
    _merge(tree, changes)
    if not tree.get("run_dir"):
        # No run folder given: runs/<name> under the current folder, as fairseq's checkpoints/.
        tree["run_dir"] = str(Path.cwd() / "runs" / str(tree.get("name", Recipe.name)))
    return from_dict(tree)


def override_decode(decode: DecodeConfig, **overrides: Any) -> DecodeConfig:
    """`decode` with keyword overrides (None: keep), each checked as a recipe's decode key is:
    a misspelt name, a wrong type or a bad value is one NmtError naming it."""
    given = {k: v for k, v in overrides.items() if v is not None}
    names = [f.name for f in dataclasses.fields(DecodeConfig)]
    for key in given:
        if key not in names:
            hint = difflib.get_close_matches(key, names, n=1)
            extra = f" (did you mean '{hint[0]}'?)" if hint else ""
            raise NmtError(f"unknown decoding setting '{key}'{extra}")
    hints = typing.get_type_hints(DecodeConfig)
    values = {k: _coerce(v, hints[k], f"decode.{k}") for k, v in given.items()}
    result = dataclasses.replace(decode, **values)
    result.validate()
    return result


def read_decode(path: Path) -> DecodeConfig:
    """The `decode` section of a recipe file (a run folder's recipe.yaml, say), validated."""
    tree = read_yaml(path).get("decode") or {}
    if not isinstance(tree, dict):
        raise NmtError(f"{path}: 'decode' must be a mapping of settings")
    decode = _build(DecodeConfig, tree, "decode")
    decode.validate()
    return decode


def to_dict(recipe: Recipe) -> dict:
    def plain(value: Any) -> Any:
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(recipe))


def dump(recipe: Recipe, path: Path) -> None:
    """Write the resolved recipe (absolute paths, every default spelled out)."""
    text = yaml.safe_dump(to_dict(recipe), sort_keys=False)
    with atomic_write(path) as f:
        f.write(f"# Resolved recipe written by nmt; `nmt train {path.name}` reruns it.\n{text}")
