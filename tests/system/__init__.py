"""System tests: whole processes. Services started as `orchestrator` processes (bench.procs), the
CLI run as a subprocess, processes killed with SIGKILL or paused, the chaos run (tests/system/chaos,
also `python -m tests.system.chaos`), the fuzzers of every door, the benchmark's quick run and the
dashboard in a headless browser. The slowest layer: it shows the parts hold together as deployed."""
