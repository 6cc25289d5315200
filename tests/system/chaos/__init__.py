"""Chaos: kill -9 every process of the system, over and over, under load; then check the guarantees.

    .venv/bin/python -m tests.system.chaos [--seconds N] [--rounds R] [--seed S] [--keep]

Its own nats-server and Postgres (embedded, in a temporary directory), and each service as its own
`orchestrator` process: capacity, admission, two dispatch instances (a standby exists) and
runners, on one pool whose cap is below the runners' slots, so the cap binds. A producer submits
jobs of random durations (job.py, which logs its own execution) through the
JetStream intake at a steady rate. Meanwhile, at seeded random intervals, one of: kill -9 of
admission, of capacity, of the dispatch leader (found from the lease), of a runner, of
nats-server, or an immediate (crash) stop of Postgres; each is started again at once (servers on
the same port and data dir). Or a pause (SIGSTOP, then SIGCONT) longer than the timeout that
watches it: Postgres (every process of it) past the runners' TTL, capacity past a runner's start
request, a runner past its TTL (its jobs keep running: its watchdog must fence them), the
dispatch leader past its lease. In-flight per pool is sampled from Postgres throughout (observe.py).

Then the load stops, every job must end, in-flight must be 0, no job's process may be left
alive, and a burst of `cap` jobs that wait for one another must all run at once (no slot
leaked). check.py checks the rest over the database's transition history and the
execution log. It prints the figures and writes bench-results/chaos.json;
tests/system/test_chaos.py runs a short seeded run and wants zero violations.

The run (run.py) starts the services with bench.procs and reports with bench.harness: tests
depend on bench, never the reverse.
"""
