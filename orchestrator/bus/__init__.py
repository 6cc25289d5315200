"""The bus: NATS connection, JetStream intake, typed events with trace propagation."""

from orchestrator.bus.bus import Bus
from orchestrator.bus.credentials import NatsCredentials
from orchestrator.bus.delivery import Delivery
from orchestrator.bus.subjects import Subjects

__all__ = ["Bus", "Delivery", "NatsCredentials", "Subjects"]
