"""The HTTP API's vocabulary: the JSON bodies of requests and answers (FastAPI publishes them at
/openapi.json and /docs) and `RequestError`, a refusal with its status. Imported by
nmt.serving.app after its check that FastAPI is installed."""

from __future__ import annotations

from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

MAX_LENGTH_PENALTY = 5.0  # GNMT alpha; tuned values lie between 0.6 and 1.2


class TranslateRequest(BaseModel):
    # Strict: a number where text belongs is an error, not silently converted.
    model_config = ConfigDict(extra="forbid", strict=True)

    text: list[str] = Field(description="The sentences to translate.")
    model: str | None = Field(
        None, description="Which served model (see GET /models); required when several are."
    )
    beam_size: int | None = Field(
        None,
        ge=1,
        description="Beam search with this beam (at most the server's max_beam_size) "
        "[default: the model's decoding settings].",
    )
    nbest: int = Field(
        1, ge=1, description="Translations per line, best first (needs beam search); adds nbest."
    )
    length_penalty: float | None = Field(
        None,
        ge=0,
        le=MAX_LENGTH_PENALTY,
        allow_inf_nan=False,
        description="GNMT length penalty alpha (0: none) [default: the model's].",
    )
    scores: bool = Field(False, description="Add nbest: each translation with its scores.")
    timeout: float | None = Field(
        None,
        gt=0,
        allow_inf_nan=False,
        description="Seconds this request may take, at most the server's timeout "
        "[default: the server's]; over it the answer is 504.",
    )
    alignment: bool = Field(
        False,
        description="Add nbest with each target subword's most attended source subword, and "
        "source_tokens.",
    )
    attention: bool = Field(
        False,
        description="Add nbest with each translation's cross-attention weights (target x "
        "source subwords, for a heatmap), its tokens, and source_tokens.",
    )
    # The rest of what `nmt translate` offers; checked as the recipe's decode keys are.
    method: Literal["beam", "greedy", "sample"] | None = Field(
        None, description="beam, greedy or sample [default: the model's]."
    )
    max_len_a: float | None = Field(
        None, allow_inf_nan=False, description="Output limit a x source length + b: a."
    )
    max_len_b: int | None = Field(None, description="Output limit a x source length + b: b.")
    min_len: int | None = Field(None, description="Fewest output tokens before EOS.")
    no_repeat_ngram: int | None = Field(None, description="Never repeat an n-gram of this size.")
    temperature: float | None = Field(None, allow_inf_nan=False, description="Sampling.")
    top_k: int | None = Field(None, description="Sampling: only the k most likely tokens.")
    top_p: float | None = Field(None, allow_inf_nan=False, description="Sampling: nucleus p.")
    seed: int | None = Field(
        None,
        ge=0,
        lt=2**63,
        description="Sampling seed: the same request with the same seed gets the same samples.",
    )
    prefixes: list[str] | None = Field(
        None, description='One target prefix per line ("" for none) that it must continue.'
    )
    constraints: list[list[str]] | None = Field(
        None,
        description="Per line, target phrases its translation must contain (beam search).",
    )


# TranslateRequest fields that are keys of the recipe's decode section, by their decode name.
DECODE_FIELDS = {
    "method": "method",
    "max_len_a": "max_len_a",
    "max_len_b": "max_len_b",
    "min_len": "min_len",
    "no_repeat_ngram": "no_repeat_ngram",
    "temperature": "temperature",
    "top_k": "top_k",
    "top_p": "top_p",
    "seed": "sampling_seed",
}


class Hypothesis(BaseModel):
    translation: str
    score: float | None = Field(description="Sum of the token log-probabilities, EOS included.")
    norm_score: float | None = Field(description="score / GNMT length penalty: the ranking.")
    tokens: list[str] | None = Field(None, description="Target subwords (with alignment).")
    alignment: list[int] | None = Field(
        None, description="For each target subword, the source subword position it attends to."
    )
    attention: list[list[float]] | None = Field(
        None, description="With attention: the weights, target subwords x source subwords."
    )


class TranslateResponse(BaseModel):
    model: str
    translations: list[str] = Field(description="One per input line, in input order.")
    nbest: list[list[Hypothesis]] | None = None
    source_tokens: list[list[str] | None] | None = Field(
        None, description="Each line's source subwords (+ </s>), which alignments index."
    )
    truncated: list[int] | None = Field(
        None,
        description="The lines (0-based) longer than the model takes, translated from their "
        "first tokens only; absent when none was.",
    )


class ModelInfo(BaseModel):
    name: str
    path: str
    checkpoint: str
    step: int | None
    source_language: str
    target_language: str
    parameters: int
    attention: dict[str, str] = Field(description="The mechanism at each attention site.")
    decode: dict[str, Any] = Field(description="The decoding defaults (the run's recipe.yaml).")
    device: str
    precision: str


class LimitsInfo(BaseModel):
    max_lines: int
    max_line_chars: int
    max_request_chars: int
    max_body_bytes: int
    max_beam_size: int
    max_length_penalty: float
    timeout: float


class ModelList(BaseModel):
    models: list[ModelInfo]
    limits: LimitsInfo


class Health(BaseModel):
    status: str
    models: list[str]
    in_flight: int = Field(description="/translate requests being answered.")
    waiting_lines: int = Field(description="Lines queued, not yet decoding.")
    batches: int = Field(description="Decode calls since the start.")
    lines: int = Field(description="Lines decoded since the start.")
    interleaved: int = Field(description="Decode calls made between the steps of a longer one.")
    expired: int = Field(description="Requests answered 504: over their deadline.")
    cancelled: int = Field(description="Requests dropped: their client went away.")


class ErrorBody(BaseModel):
    error: str
    limit: str | None = Field(None, description="The limit the request went over.")
    max: int | float | None = Field(None, description="That limit's value.")


class RequestError(Exception):
    """A request the server refuses: answered with `status` and an ErrorBody."""

    def __init__(
        self,
        status: int,
        message: str,
        limit: str | None = None,
        maximum: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.limit, self.maximum = status, message, limit, maximum
        self.headers = headers

    def response(self) -> JSONResponse:
        body = ErrorBody(error=self.message, limit=self.limit, max=self.maximum)
        return JSONResponse(
            body.model_dump(exclude_none=True), status_code=self.status, headers=self.headers
        )
