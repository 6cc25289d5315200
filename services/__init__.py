"""The services: admission, capacity, dispatch, leader, provisioner, api (HTTP), runner (the
runner agent). Each talks to the others only through events on the bus and rows in Postgres.

A service may import `orchestrator` and `schemas`, and its own modules; never another service nor
`app`.
"""
