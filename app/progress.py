"""The line `submit --wait` shows on stderr while the job waits: its state and why it waits
(`blocked_by` from GET /v1/jobs/{id}). On a terminal it is one line rewritten in place and gone
once the job runs; elsewhere (a CI log, a pipe) one line per change, so the log keeps the story.
stdout stays the job's own output."""

from __future__ import annotations

import shutil
from typing import TextIO

from schemas.api import JobDetail
from schemas.jobs import JobState

WAITING = (JobState.queued, JobState.assigned)
CLEAR_LINE = "\r\x1b[K"


def describe(job: JobDetail) -> str:
    line = f"orchestrator: job {job.id} {job.state}"
    if job.state == JobState.assigned and job.runner_id:
        return f"{line} to runner {job.runner_id}: starting"
    if (why := job.blocked_by) is not None:
        line += f": {why.message}"
        if why.competing > 1:
            line += f" ({why.position} of {why.competing} competing go first)"
    return line


class Progress:
    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._shown = ""  # the line on screen (a terminal), or the last one written

    def show(self, job: JobDetail) -> None:
        if job.state not in WAITING:
            self.clear()
            return
        line = describe(job)
        if line == self._shown:
            return
        if self.tty:  # no wider than the terminal: a wrapped line could not be rewritten
            width = shutil.get_terminal_size().columns - 1
            self.stream.write(CLEAR_LINE + line[:width])
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._shown = line

    def clear(self) -> None:
        """Off the screen (a terminal): the job runs, or the command ends."""
        if self.tty and self._shown:
            self.stream.write(CLEAR_LINE)
            self.stream.flush()
        self._shown = ""
