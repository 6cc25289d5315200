"""The application: the composition root. The `orchestrator` command (`cli`), the runtime that
builds the connections and wires services together (`runtime`), the metrics server of a process
without the api, the runner agent as a process, and the bundled `local` provisioner with its
fork server.

May import everything (`orchestrator`, `services`, `schemas`); nothing imports it.
"""
