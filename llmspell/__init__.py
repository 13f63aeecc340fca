"""llmspell: an actor-model multi-agent runtime on Ray."""

from llmspell.actors.base import ActorBase
from llmspell.runtime.errors import (
    ActorError,
    ActorNotFound,
    ActorUnavailable,
    AskTimeout,
    CodecError,
    HookCancelled,
    LlmspellError,
    MailboxClosed,
    MailboxError,
    MailboxFull,
    PatternError,
    RemoteError,
    StateError,
    VersionConflict,
)
from llmspell.runtime.events import Event
from llmspell.runtime.messages import Envelope, Kind, Priority, register_payload
from llmspell.runtime.runtime import ActorRef, Runtime
from llmspell.runtime.settings import RuntimeSettings

__version__ = "0.1.0"

__all__ = [
    "ActorBase",
    "ActorError",
    "ActorNotFound",
    "ActorRef",
    "ActorUnavailable",
    "AskTimeout",
    "CodecError",
    "Envelope",
    "Event",
    "HookCancelled",
    "Kind",
    "LlmspellError",
    "MailboxClosed",
    "MailboxError",
    "MailboxFull",
    "PatternError",
    "Priority",
    "RemoteError",
    "Runtime",
    "RuntimeSettings",
    "StateError",
    "VersionConflict",
    "__version__",
    "register_payload",
]
