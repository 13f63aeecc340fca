"""The job layer: job specs, the runner, submission to a Ray cluster, the demo.

    spec = JobSpec.from_file("job.yaml")
    result = await llmspell.jobs.run(spec, {"topic": "Ray"})
"""

from typing import TYPE_CHECKING

from llmspell._lazy import lazy_names
from llmspell.jobs.result import ExitCode, JobResult, JobStatus
from llmspell.jobs.spec import JobSpec, JobSpecError

if TYPE_CHECKING:
    from llmspell.jobs.runner import JobRun, resume, run

__all__ = ["ExitCode", "JobResult", "JobRun", "JobSpec", "JobSpecError", "JobStatus", "resume",
           "run"]

# The runner's names load with Ray, on first use: reading and checking a spec needs neither
# (`llmspell validate`).
__getattr__ = lazy_names(__name__, dict.fromkeys(("JobRun", "resume", "run"),
                                                 "llmspell.jobs.runner"))
