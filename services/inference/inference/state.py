"""What the inference lifespan owns; routes reach it through ``request.app.state.inference``."""

from __future__ import annotations

from dataclasses import dataclass

from inference.catalog import ItemCatalog
from inference.config import InferenceSettings
from inference.models import ModelHolder
from inference.recommender import Recommender


@dataclass
class InferenceState:
    settings: InferenceSettings
    holder: ModelHolder
    catalog: ItemCatalog
    recommender: Recommender
