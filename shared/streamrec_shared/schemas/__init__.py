"""Wire schemas shared by every service: what travels over HTTP and through Kafka."""

from streamrec_shared.schemas.errors import ErrorBody, ErrorDetail, validation_details
from streamrec_shared.schemas.events import (
    EVENT_SCHEMA_VERSION,
    EventBatchIn,
    EventIn,
    EventRecord,
    EventTimeWindow,
    EventType,
    batch_adapter,
)

__all__ = [
    "EVENT_SCHEMA_VERSION",
    "ErrorBody",
    "ErrorDetail",
    "EventBatchIn",
    "EventIn",
    "EventRecord",
    "EventTimeWindow",
    "EventType",
    "batch_adapter",
    "validation_details",
]
