"""Admission: its doors (`doors`: the JetStream intake, core request/reply) and its rules (`rules`:
pure functions deciding what a spec becomes)."""

from services.admission.doors import Admission

__all__ = ["Admission"]
