"""The job layer: job specs, the runner, submission to a Ray cluster, the demo.

    spec = JobSpec.from_file("job.yaml")
    result = await llmspell.jobs.run(spec, {"topic": "Ray"})
"""

from typing import TYPE_CHECKING

from llmspell.jobs.result import ExitCode, JobResult, JobStatus
from llmspell.jobs.spec import JobSpec, JobSpecError

if TYPE_CHECKING:
    from llmspell.jobs.runner import JobRun, resume, run

__all__ = ["ExitCode", "JobResult", "JobRun", "JobSpec", "JobSpecError", "JobStatus", "resume",
           "run"]


def __getattr__(name: str) -> object:
    """The runner's names load with Ray, on first use: reading and checking a spec needs
    neither (`llmspell validate`)."""
    if name not in ("JobRun", "resume", "run"):
        raise AttributeError(f"module 'llmspell.jobs' has no attribute {name!r}")
    from llmspell.jobs import runner

    value = getattr(runner, name)
    globals()[name] = value
    return value
