"""Items the served version does not know yet, ranked from their first events.

A version knows only the items it trained on, so an item launched after it could not be
recommended before the next version, and on a drifting catalogue that is a real share of what
users pick: the synthetic drift stream, a version every 250 events, 8 % of events are on such
items (26 % every 1,000). The feature updater keeps each new item's context (the items its first
users touched just before it, ``inference.features``); this task places the items the served
version does not know with ``fold_in`` against that version, and the recommender ranks them with
the catalogue. In process, on that stream: HR@10 0.544 → 0.597 (README, "Evaluation"). Young
items the version knows (among the newest ``young_items``, it counted fewer than
``young_events`` of their events) get the term from their context on top of their score.

The work is off the request path: the task polls two counters the updater bumps (a context
opened, a context added to), rereads the newest items when one was opened or the model was
swapped, and the placed items' contexts that are still open (within their item's first events)
when any context was added to; it rebuilds the table only when one of those changed, and a
request only reads the table it finds. Contexts of items the version knows and counted enough of
change often and cost nothing here.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from prometheus_client import CollectorRegistry, Gauge
from redis.exceptions import RedisError
from streamrec_shared.models.item_pooling import FoldedItems, ItemContext, fold_in
from streamrec_shared.tasks import BackgroundTask

from inference.features import FeatureStore
from inference.models import ServedModel

log = logging.getLogger(__name__)


class CurrentModel(Protocol):
    @property
    def current(self) -> ServedModel | None: ...


class NewItemVectors:
    def __init__(
        self,
        store: FeatureStore,
        holder: CurrentModel,
        registry: CollectorRegistry,
        max_items: int,
        refresh_s: float,
        young_events: int = 0,
        young_items: int = 0,
    ) -> None:
        self.store = store
        self.holder = holder
        self.max_items = max_items
        self.refresh_s = refresh_s
        self.young_events = young_events
        # Only among the newest this many: young items' contexts are reread whenever any
        # context moves, and placing a thousand at every change cost inference 3x its CPU.
        self.young_items = young_items
        self.ranked = Gauge(
            "inference_new_items_ranked",
            "Items the served version does not know, ranked from their contexts.",
            registry=registry,
        )
        # The table and the model (the object, not its number) its vectors belong to.
        self._table: tuple[ServedModel, FoldedItems] | None = None
        # What the table was built from: the model and the two counters of the contexts.
        self._built_from: tuple[ServedModel, int, int] | None = None
        # The newest items that model does not know, or counted fewer than young_events of.
        self._placed: list[str] = []
        # Their contexts as last read. A context is closed once its item had the first
        # `context_events` events (the updater counts no more pairs into it) and is not read
        # again: only open ones are, at each change of any context.
        self._contexts: dict[str, ItemContext] = {}
        self._task = BackgroundTask("new-item-vectors", self._follow)

    def start(self) -> None:
        self._task.start()

    async def stop(self) -> None:
        await self._task.stop()

    def for_model(self, model: ServedModel) -> FoldedItems | None:
        """The new items placed against ``model``; None until a table for it is built."""
        table = self._table
        if table is None or table[0] is not model:
            return None
        return table[1]

    async def _follow(self) -> None:
        while True:
            try:
                await self.refresh()
            except (RedisError, OSError) as error:  # the table in hand stays valid for its model
                log.debug("new item vectors not refreshed: %s", error)
            await asyncio.sleep(self.refresh_s)

    async def refresh(self) -> bool:
        """Rebuild the table if the model, the newest items or their contexts changed."""
        model = self.holder.current
        opened, counted = await self.store.context_changes()
        if model is None:
            dropped = self._table is not None
            self._table, self._built_from = None, None
            self.ranked.set(0)
            return dropped
        built = self._built_from
        if built is None or built[0] is not model or built[1] != opened:
            # A new version, or items first seen since: which of the newest are unknown, or young.
            newest = await self.store.newest_items(self.max_items)
            self._placed = [
                item
                for rank, item in enumerate(newest)
                if model.scorer.needs_context(
                    item, self.young_events if rank < self.young_items else 0
                )
            ]
        elif built[2] == counted or not self._placed:
            # Nothing new, or only contexts of items this version knows (most of the time).
            self._built_from = (model, opened, counted)
            return False
        if not await self._reread_open_contexts() and built is not None and built[0] is model:
            # Only contexts that no placed item has, or closed ones: the table holds.
            self._built_from = (model, opened, counted)
            return False
        contexts = {item: self._contexts[item] for item in self._placed if item in self._contexts}
        folded = (
            await asyncio.to_thread(fold_in, model.scorer, contexts, self.young_events)
            if contexts
            else fold_in(model.scorer, {})
        )
        self._table = (model, folded)
        self._built_from = (model, opened, counted)
        self.ranked.set(len(folded.item_ids))
        return True

    async def _reread_open_contexts(self) -> bool:
        """Read the placed items' contexts that may have changed; True if any did (or an item
        joined or left the placed ones)."""
        placed = set(self._placed)
        left = self._contexts.keys() - placed
        for item in left:
            del self._contexts[item]
        cap = self.store.context_events
        held = {
            item: self._contexts[item].events if item in self._contexts else -1
            for item in self._placed
            if item not in self._contexts or self._contexts[item].events < cap
        }
        changed = bool(left)
        for item, context in (await self.store.changed_contexts(held)).items():
            if context is not None:
                self._contexts[item] = context
                changed = True
            elif self._contexts.pop(item, None) is not None:  # expired
                changed = True
        return changed
