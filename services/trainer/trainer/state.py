"""What the trainer's lifespan owns; routes reach it through ``request.app.state.trainer``."""

from __future__ import annotations

from dataclasses import dataclass

from trainer.config import TrainerSettings
from trainer.coordinator import Coordinator
from trainer.runs import RunServices


@dataclass
class TrainerState:
    settings: TrainerSettings
    services: RunServices
    coordinator: Coordinator
