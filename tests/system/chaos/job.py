"""The command of every chaos job: it records its own execution for the invariant checker.

    python -I -S job.py LOG POOL sleep SECONDS
    python -I -S job.py LOG POOL barrier N BARRIER_FILE

Appends `<monotonic ns> <start|tick|end> <job id> <runner> <attempt> <pid> <pool>` lines to LOG
(one O_APPEND write each, so lines from concurrent jobs never interleave), a tick every 50 ms
while it runs: an execution spans its first to its last line, and one that outlived its runner
keeps ticking, where the checker sees it. CLOCK_MONOTONIC is system-wide, so lines from every
process compare. `sleep` runs for SECONDS; `barrier` adds its job id to BARRIER_FILE and waits
until N jobs have (so N jobs ran at once), failing after 30 s. Stdlib only: it starts per job.
"""

import os
import sys
import time

TICK_S = 0.05
BARRIER_TIMEOUT_S = 30.0


def main(log_path: str, pool: str, mode: str, arg: str, barrier_path: str = "") -> int:
    ident = " ".join(
        [
            os.environ["ORCH_JOB_ID"],
            os.environ["ORCH_RUNNER_ID"],
            os.environ["ORCH_JOB_ATTEMPT"],
            str(os.getpid()),
            pool,
        ]
    )

    def log(event: str) -> None:
        append(log_path, f"{time.monotonic_ns()} {event} {ident}\n")

    log("start")
    begun = time.monotonic()
    if mode == "sleep":

        def done() -> bool:
            return time.monotonic() - begun >= float(arg)
    else:
        append(barrier_path, os.environ["ORCH_JOB_ID"] + "\n")

        def done() -> bool:
            with open(barrier_path) as f:
                return len(set(f.read().split())) >= int(arg)

    while not done():
        if time.monotonic() - begun > BARRIER_TIMEOUT_S:
            return 1
        time.sleep(TICK_S)
        log("tick")
    log("end")
    return 0


def append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
