"""The typed contract: pydantic models of every event and API body.

Imports only pydantic and itself.
"""
