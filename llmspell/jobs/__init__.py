"""The job layer: job specs, the runner, submission to a Ray cluster, the demo."""

from llmspell.jobs.result import ExitCode, JobResult, JobStatus

__all__ = ["ExitCode", "JobResult", "JobStatus"]
