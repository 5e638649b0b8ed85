"""Request bodies. Unknown fields are refused; limits that depend on settings
are checked in app.validation, where the configured limit is named."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# Namespaces and keys are spelled so they can never collide with the embedding
# cache's own namespaces (which contain a colon) or break a storage path.
Namespace = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")
]
Key = Annotated[str, StringConstraints(min_length=1, max_length=512)]
Scalar = str | int | float | bool
EncodingFormat = Literal["float", "base64"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbeddingsRequest(Strict):
    """OpenAI's embeddings request: one text or a list of texts."""

    input: str | list[str]
    model: str | None = None
    encoding_format: EncodingFormat = "float"
    dimensions: int | None = None
    user: str | None = None


class LookupRequest(Strict):
    namespace: Namespace = "default"
    keys: list[Key]
    encoding_format: EncodingFormat = "float"


class VectorItem(Strict):
    key: Key
    vector: list[float]
    metadata: dict[str, Any] | None = None


class PutVectorsRequest(Strict):
    namespace: Namespace = "default"
    items: list[VectorItem]


class MemoryCreate(Strict):
    namespace: Namespace = "default"
    text: str
    metadata: dict[str, Any] | None = None


class MemorySearch(Strict):
    namespace: Namespace = "default"
    query: str | None = None
    vector: list[float] | None = None
    k: int = Field(10, ge=1)
    filter: dict[str, Scalar] | None = None
