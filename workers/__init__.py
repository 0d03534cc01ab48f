"""The runtime on Dramatiq: declare actors, run workers, start runs."""

from workers._actor import Actor, actor, registered_actors, subscribers
from workers._context import Context, Memory
from workers._errors import ActorError, RetryLater, Wait, WaitTimeout, WorkerError
from workers._maintenance import Maintenance
from workers._runtime import Runtime, RuntimeConfig
from workers._worker import WORKER_THREADS, Worker, import_modules
from workers.agents import Agent, AgentFinished, tool

__all__ = [
    # declaring actors
    "Actor",
    "ActorError",
    "Agent",
    "AgentFinished",
    "Context",
    "Memory",
    "RetryLater",
    "Wait",
    "WaitTimeout",
    "actor",
    "registered_actors",
    "subscribers",
    "tool",
    # running them
    "Maintenance",
    "Runtime",
    "RuntimeConfig",
    "WORKER_THREADS",
    "Worker",
    "WorkerError",
    "import_modules",
]
