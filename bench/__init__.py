"""Measurements and the process harness they share with the tests."""
