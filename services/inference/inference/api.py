"""Inference's HTTP API: recommendations, similar items, item metadata, the served model."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Request, Response
from redis.exceptions import RedisError
from streamrec_shared.http import ApiError, json_response
from streamrec_shared.schemas.events import EntityId

from inference.catalog import ItemsIn, Tag
from inference.state import InferenceState

router = APIRouter(prefix="/v1")


def _state(request: Request) -> InferenceState:
    state: InferenceState = request.app.state.inference
    return state


def _items(state: InferenceState, ranked: list[tuple[str, float]]) -> list[dict[str, object]]:
    title = state.catalog.title
    return [{"item_id": item, "score": score, "title": title(item)} for item, score in ranked]


@router.get(
    "/recommendations",
    responses={200: {"description": "Top-K items with scores; `fallback` names any fallback."}},
)
async def recommendations(
    request: Request,
    user_id: Annotated[EntityId, Query()],
    k: Annotated[int | None, Query(ge=1, le=1000)] = None,
    exclude_seen: bool = True,
    exclude: Annotated[list[EntityId] | None, Query(max_length=1000)] = None,
    tag: Annotated[Tag | None, Query()] = None,
    trending: Annotated[
        bool, Query(description="Trending instead of popularity for users without history.")
    ] = False,
) -> Response:
    state = _state(request)
    settings = state.settings
    if k is not None and k > settings.max_k:
        raise ApiError(422, "invalid_k", f"k is at most {settings.max_k}")
    result = await state.recommender.recommend(
        user_id, k or settings.default_k, exclude_seen, exclude or (), tag, trending
    )
    return json_response(
        {
            "user_id": user_id,
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
        raise ApiError(404, "unknown_item", f"item {item_id!r} is not in model v{model.version}")
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
