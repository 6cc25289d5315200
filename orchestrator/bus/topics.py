"""Typed topics: a subject pattern and the one model every message on it is.

A `Topic[M]` is declared once (in `Subjects`), relative to the namespace with `*` for each
parameter (`slots.available.*`), bound to a namespace's root by the registry and to its
parameters at the call (`subjects.slot_available.at(pool)`). The bus takes topics, never bare
subjects: the model comes from the topic, so no two call sites read one subject as two models,
and an event of another model is refused at the call (a TypeError, and a type checker's error:
the topic is generic over its model). A `RequestTopic[M, R]` names its reply too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, Self, TypeVar

from pydantic import BaseModel, TypeAdapter

M = TypeVar("M", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)

WILDCARD = "*"

_list_adapters: dict[type[BaseModel], TypeAdapter[Any]] = {}


def list_of(model: type[M]) -> TypeAdapter[list[M]]:
    """A batch's parser (a JSON array of `model`), built once per model."""
    if model not in _list_adapters:
        _list_adapters[model] = TypeAdapter(list[model])  # type: ignore[valid-type]
    return _list_adapters[model]


def json_array(models: Sequence[BaseModel]) -> bytes:
    return b"[" + b",".join(m.model_dump_json().encode() for m in models) + b"]"


@dataclass(frozen=True)
class Topic(Generic[M]):
    """Messages of `model` on `relative` (after `<ns>.v1`), one `*` per parameter."""

    relative: str
    model: type[M]
    root: str = field(default="", kw_only=True)  # `<ns>.v1` once bound to a namespace

    @property
    def subject(self) -> str:
        return f"{self.root}.{self.relative}" if self.root else self.relative

    def at(self, *params: str) -> Self:
        """The concrete topic: each `*` given in order (a pool, a runner id, a shard)."""
        tokens = self.relative.split(".")
        slots = [i for i, token in enumerate(tokens) if token == WILDCARD]
        if len(params) != len(slots):
            raise TypeError(f"{self.relative} takes {len(slots)} parameters, not {len(params)}")
        for i, param in zip(slots, params, strict=True):
            tokens[i] = param
        return replace(self, relative=".".join(tokens))

    def any(self) -> Self:
        """Every concrete topic of this one (the pattern itself): what a subscriber to all reads."""
        return self

    def under(self, root: str) -> Self:
        return replace(self, root=root)

    def encode(self, event: M) -> bytes:
        self._refuse_unsendable((event,))
        return event.model_dump_json().encode()

    def encode_many(self, events: Sequence[M]) -> bytes:
        self._refuse_unsendable(events)
        return json_array(events)

    def decode(self, data: bytes) -> M:
        return self.model.model_validate_json(data)

    def decode_many(self, data: bytes) -> list[M]:
        return list_of(self.model).validate_json(data)

    def _refuse_unsendable(self, events: Sequence[BaseModel]) -> None:
        if WILDCARD in self.relative.split("."):
            raise TypeError(f"{self.subject} is a pattern: give its parameters (.at(...)) to send on it")
        if not self.root:  # `Subjects.x` is the declaration; `bus.subjects.x` is in the bus's namespace
            raise TypeError(f"{self.relative} is in no namespace: send on the bus's own topic")
        for event in events:  # checked at run time too: an untyped caller could send any model
            if not isinstance(event, self.model):
                raise TypeError(f"{self.subject} carries {self.model.__name__}, not {type(event).__name__}")


@dataclass(frozen=True)
class RequestTopic(Topic[M], Generic[M, R]):
    """A topic of requests, each answered with a `reply`."""

    reply: type[R]


@dataclass(frozen=True)
class JobNews(Topic[M]):
    """A job event, one topic per verb (`jobs.<verb>.*`): composed in Postgres by the edge that
    changes the job and relayed by the outbox into the job-events stream, which captures these."""
