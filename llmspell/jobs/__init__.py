"""The job layer: job specs, the runner, submission to a Ray cluster, the demo.

    spec = JobSpec.from_file("job.yaml")
    result = await llmspell.jobs.run(spec, {"topic": "Ray"})
"""

from llmspell.jobs.result import ExitCode, JobResult, JobStatus
from llmspell.jobs.runner import JobRun, resume, run
from llmspell.jobs.spec import JobSpec, JobSpecError

__all__ = ["ExitCode", "JobResult", "JobRun", "JobSpec", "JobSpecError", "JobStatus", "resume",
           "run"]
