"""Inference's HTTP API: recommendations, similar items, item metadata, the served model."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from redis.exceptions import RedisError
from streamrec_shared.http import ApiError, RawRoute, json_response
from streamrec_shared.openapi import query_parameters
from streamrec_shared.schemas.errors import ErrorDetail, validation_details
from streamrec_shared.schemas.events import EntityId

from inference.catalog import ItemsIn, Tag
from inference.state import InferenceState

router = APIRouter(prefix="/v1")
# The hot path: endpoints that validate their own input (see ``RawRoute``), which the app also
# serves without going through the middleware stack (``ServiceApp.include_hot_router``).
hot = APIRouter(prefix="/v1", route_class=RawRoute)


def _state(request: Request) -> InferenceState:
    state: InferenceState = request.app.state.inference
    return state


def _items(state: InferenceState, ranked: list[tuple[str, float]]) -> list[dict[str, object]]:
    title = state.catalog.title
    return [{"item_id": item, "score": score, "title": title(item)} for item, score in ranked]


class RecommendationQuery(BaseModel):
    """The query string of ``GET /v1/recommendations``."""

    model_config = ConfigDict(extra="forbid")

    user_id: EntityId
    k: int | None = Field(default=None, ge=1, le=1000, description="How many (default_k).")
    exclude_seen: bool = Field(default=True, description="Leave out items the user touched.")
    exclude: list[EntityId] = Field(default_factory=list, max_length=1000)
    tag: Tag | None = Field(default=None, description="Only items carrying this tag.")
    trending: bool = Field(
        default=False,
        description="Trending items instead of the model's prior for users without history.",
    )


_LISTS = frozenset({"exclude"})


def _query(request: Request) -> RecommendationQuery:
    # parse_qsl straight from the scope, as Starlette's QueryParams does (the last value of a
    # repeated scalar wins) without building its multi-dict for every request.
    raw: dict[str, Any] = {}
    for key, value in parse_qsl(request.scope["query_string"].decode("latin-1"), True):
        if key in _LISTS:
            raw.setdefault(key, []).append(value)
        else:
            raw[key] = value
    try:
        return RecommendationQuery.model_validate(raw)
    except ValidationError as error:
        raise ApiError(
            422, "invalid_query", "invalid query parameters", validation_details(error)
        ) from error


@hot.get(
    "/recommendations",
    responses={
        200: {"description": "Top-K items with scores; `fallback` names any fallback."},
        422: {"description": "Invalid query parameters (field and reason)."},
    },
    openapi_extra=query_parameters(RecommendationQuery),
)
async def recommendations(request: Request) -> Response:
    """Top-K for a user from their fresh features and the served model (or a fallback).

    A raw route: the query is validated by ``RecommendationQuery`` here, which skips FastAPI's
    per-request dependency solving (about a tenth of the request's CPU); a hot one: dispatched
    straight from the app, past the middleware stack (about a fifth).
    """
    state = _state(request)
    settings = state.settings
    query = _query(request)
    if query.k is not None and query.k > settings.max_k:
        raise ApiError(
            422, "invalid_query", f"k is at most {settings.max_k}",
            [ErrorDetail(field="k", reason=f"at most {settings.max_k}")],
        )  # fmt: skip
    result = await state.recommender.recommend(
        query.user_id,
        query.k or settings.default_k,
        query.exclude_seen,
        query.exclude,
        query.tag,
        query.trending,
    )
    return json_response(
        {
            "user_id": query.user_id,
            "rec_id": result.rec_id,
            "spec_id": settings.spec_id,
            "model_version": result.model_version,
            "fallback": result.fallback,
            "items": _items(state, result.items),
        }
    )


@router.get("/items/{item_id}/similar", responses={404: {}, 503: {}})
async def similar(
    request: Request,
    item_id: Annotated[EntityId, Path()],
    k: Annotated[int, Query(ge=1, le=1000)] = 10,
) -> Response:
    state = _state(request)
    model = state.holder.current
    if model is None:
        raise ApiError(
            503, "no_model", "no model version is loaded yet", headers={"Retry-After": "5"}
        )
    ranked = state.recommender.similar(model, item_id, min(k, state.settings.max_k))
    if ranked is None:
        raise ApiError(
            404,
            "unknown_item",
            f"item {item_id!r} is not in model v{model.version} nor among the new items it ranks",
        )
    return json_response(
        {"item_id": item_id, "model_version": model.version, "items": _items(state, ranked)}
    )


@router.post("/items", responses={503: {}})
async def upsert_items(body: ItemsIn, request: Request) -> Response:
    """Create or replace item metadata; unavailable items are never recommended."""
    state = _state(request)
    try:
        version = await state.catalog.upsert(body.items)
    except (RedisError, OSError) as error:
        raise ApiError(
            503,
            "redis_unavailable",
            f"item metadata not stored: {error}",
            headers={"Retry-After": "2"},
        ) from error
    return json_response({"upserted": len(body.items), "catalog_version": version})


@router.get("/model")
async def served_model(request: Request) -> Response:
    model = _state(request).holder.current
    if model is None:
        return json_response({"spec_id": _state(request).settings.spec_id, "version": None})
    return json_response(
        {
            "spec_id": model.spec_id,
            "version": model.version,
            "digest": model.digest,
            "items": model.scorer.item_count,
            "history_length": model.history_length,
            "loaded_at": model.loaded_at,
        }
    )
