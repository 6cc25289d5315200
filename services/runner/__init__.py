"""The runner agent (`agent`): takes assignments for its slots and runs each job. A job's process,
its session and its signals are `job_process`; its output, shipped to the job-output stream, is
`job_output`; the watchdog that kills a job's group when the agent dies is `watchdog`."""

from services.runner.agent import Execute, Runner
from services.runner.job_process import Outcome

__all__ = ["Execute", "Outcome", "Runner"]
