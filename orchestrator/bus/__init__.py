"""The bus: NATS connection, JetStream intake, typed topics with trace propagation."""

from orchestrator.bus.bus import Bus
from orchestrator.bus.credentials import NatsCredentials
from orchestrator.bus.delivery import Delivery
from orchestrator.bus.subjects import Subjects
from orchestrator.bus.topics import RequestTopic, Topic

__all__ = ["Bus", "Delivery", "NatsCredentials", "RequestTopic", "Subjects", "Topic"]
