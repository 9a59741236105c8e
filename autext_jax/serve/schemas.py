"""The request and response models: they validate every body and generate ``/openapi.json``.

Why one set of pydantic models for both: the published description cannot drift from what the service
accepts and answers. Request models are built per app (``request_models``) because their limits (texts per
request, characters per text) and the model's operating points are the service's configuration, and the
schema states them (``maxItems``, ``maxLength``, ``enum``).

Two request shapes: ``/v1/score`` (this project's records; unknown fields are refused) and the Hugging Face
text-classification shape at ``POST /`` (``{"inputs", "parameters", "options"}``; as the Hugging Face task
specification allows extra properties everywhere, unknown keys there are accepted, ignored and named in the
``X-Ignored-Keys`` answer header).
"""

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from autext_jax import segments as segments_module

SEGMENT_MODES: tuple[str, ...] = tuple(segments_module.MODES)
HF_LABELS = ("generated", "human")  # label of bot_prob, label of 1 - bot_prob


# ---- answers ---------------------------------------------------------------------------------------


class Segment(BaseModel):
    """A piece of the text with its own score; ``start``/``end`` are code-point offsets (Python slicing)."""

    model_config = ConfigDict(extra="allow")
    start: int
    end: int
    bot_prob: float
    truncated: bool = Field(False, description="longer than max_length tokens: only its start was scored")


class Record(BaseModel):
    """One text's scores (the CLI's record). Fields a newer detector adds are passed through."""

    model_config = ConfigDict(extra="allow")
    bot_prob: float = Field(ge=0, le=1, description="probability that a language model wrote the text")
    english_prob: float = Field(ge=0, le=1)
    is_bot: bool = Field(description="the decision, at the model's threshold or the operating point")
    n_chunks: int
    n_tokens: int = Field(description="tokens the scores rest on")
    truncated: bool = Field(description="only the first n_tokens tokens were scored")
    short: bool = Field(description="shorter than the texts the model was validated on")
    obfuscated: bool | None = Field(
        None,
        description="invisible characters, look-alike letters or odd casing were undone before scoring "
        "(null when the service runs with --no-normalize)",
    )
    n_changed: int | None = Field(None, description="characters the normalization removed or changed")
    operating_point: str | None = None
    segments: list[Segment] | None = None


class ScoreResponse(BaseModel):
    records: list[Record]


class Label(BaseModel):
    """One label of the Hugging Face text-classification answer."""

    label: Literal["generated", "human"]
    score: float = Field(ge=0, le=1)


# Per text, its labels: the service's decision first, then the other (unless top_k cut it).
HFResponse = list[list[Label]]


class ErrorBody(BaseModel):
    """Every refusal (4xx) and failure (5xx): one line saying what is wrong and what to do."""

    error: str


class Limits(BaseModel):
    max_body_bytes: int
    max_texts: int
    max_chars: int
    body_timeout_s: float


class Info(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    threshold: float
    operating_points: dict[str, float]
    segment_modes: list[str]
    limits: Limits
    batches: dict[str, int]


# ---- requests --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestModels:
    """The two request models of one app (their limits and operating points are the app's)."""

    score: type[BaseModel]
    hf: type[BaseModel]


def request_models(max_texts: int, max_chars: int, operating_points: list[str]) -> RequestModels:
    """Request models stating this service's limits and the model's operating points."""
    # pydantic refuses unpaired surrogates itself (string_unicode), reported in words by reading.py
    text_type = Annotated[str, Field(max_length=max_chars)]
    texts_type = Annotated[list[text_type], Field(min_length=1, max_length=max_texts)]
    points = tuple(operating_points)
    # No operating points: only null is accepted (a Literal needs at least one value).
    point_type: Any = Literal[points] | None if points else None  # type: ignore[valid-type]

    def point_field() -> Any:
        return Field(None, description="one of the model's operating points (see /v1/info); null: threshold")

    class ScoreRequest(BaseModel):
        """Texts to score: ``texts`` (a list) or ``text`` (one string), not both."""

        model_config = ConfigDict(
            extra="forbid",
            strict=True,
            json_schema_extra={"oneOf": [{"required": ["texts"]}, {"required": ["text"]}]},
        )
        texts: texts_type | None = None
        text: text_type | None = None
        segments: Literal[SEGMENT_MODES] | None = Field(  # type: ignore[valid-type]
            None, description="also score pieces of each text: sentences or the engine's windows"
        )
        operating_point: point_type = point_field()

        @model_validator(mode="after")
        def _one_source(self) -> Self:
            if (self.texts is None) == (self.text is None):
                raise ValueError('give exactly one of "texts" (a list) or "text" (a string)')
            return self

        def all_texts(self) -> list[str]:
            return self.texts if self.texts is not None else [self.text]

    class Parameters(BaseModel):
        """Hugging Face text-classification parameters; other keys are accepted and ignored."""

        model_config = ConfigDict(extra="allow", strict=True)
        top_k: int | None = Field(None, ge=1, description="only the first top_k labels (the decision first)")
        function_to_apply: Literal["sigmoid", "softmax"] | None = Field(
            None, description="either gives the same probabilities for this binary head"
        )

    class Options(BaseModel):
        """The Inference API's options; accepted, with no effect (no cache; the model is always loaded)."""

        model_config = ConfigDict(extra="allow", strict=True)
        use_cache: bool | None = None
        wait_for_model: bool | None = None

    class HFRequest(BaseModel):
        """The Hugging Face text-classification request (``InferenceClient.text_classification``)."""

        model_config = ConfigDict(extra="allow", strict=True)
        inputs: text_type | texts_type
        parameters: Parameters | None = None
        options: Options | None = None
        operating_point: point_type = point_field()

        def all_texts(self) -> list[str]:
            return [self.inputs] if isinstance(self.inputs, str) else self.inputs

        def ignored_keys(self) -> list[str]:
            """Keys this service does not know, named ``parameters.x`` / ``options.y`` / ``x``."""
            out = [str(k) for k in self.model_extra or {}]
            for name in ("parameters", "options"):
                if (part := getattr(self, name)) is not None:
                    out += [f"{name}.{k}" for k in part.model_extra or {}]
            return sorted(out)

    return RequestModels(score=ScoreRequest, hf=HFRequest)
