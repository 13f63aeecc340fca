"""Providers by name, so that `provider:model` strings resolve.

Built in: `openai` (the Responses API), `openai-chat` (Chat Completions), `anthropic`, `local`
(Chat Completions against the local LLM server or any OpenAI-compatible server at
LLMSPELL_LOCAL_LLM_URL) and `scripted` (offline, answering from the scenario file named by its
settings' `scenario`, if any). Keys and endpoints come from the environment
(OPENAI_API_KEY, OPENAI_BASE_URL, ANTHROPIC_API_KEY, ANTHROPIC_BASE_URL) or from
`ProviderSettings`; keys are SecretStr and never appear in logs, events or reprs.
Users add their own with `register_provider(name, factory)`.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable

from pydantic import BaseModel, SecretStr

from llmspell.llm.http import HttpKind
from llmspell.llm.provider import Provider
from llmspell.runtime.errors import LlmspellError
from llmspell.runtime.logs import add_secret, get_logger

Factory = Callable[["ProviderSettings"], Provider]


class ProviderSettings(BaseModel):
    """How to reach one provider. Unset fields fall back to the provider's environment."""

    api_key: SecretStr | None = None
    api_key_env: str | None = None  # the environment variable holding the key, if not the usual
    base_url: str | None = None
    timeout: float = 60.0
    # the SDK's HTTP transport; "auto": aiohttp (less CPU per call), httpx behind a proxy
    http: HttpKind = "auto"
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    scenario: str | None = None  # scripted: a scenario file (YAML or JSON) to answer from


class UnknownProvider(LlmspellError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def split_model(model: str) -> tuple[str, str]:
    """'anthropic:claude-sonnet-4' -> ('anthropic', 'claude-sonnet-4')."""
    provider, sep, name = model.partition(":")
    if not sep or not provider or not name:
        raise ValueError(f"model {model!r} must be written 'provider:model', "
                         "for example 'openai:gpt-4o' or 'anthropic:claude-sonnet-4'")
    return provider, name


def _secret(settings: ProviderSettings, env: str) -> str | None:
    value = (settings.api_key.get_secret_value() if settings.api_key is not None
             else os.environ.get(settings.api_key_env or env))
    add_secret(value)
    return value


def _openai(api: str, name: str) -> Factory:
    def make(settings: ProviderSettings) -> Provider:
        from llmspell.llm.openai_provider import OpenAIProvider

        return OpenAIProvider(name=name, api="chat" if api == "chat" else "responses",
                              api_key=_secret(settings, "OPENAI_API_KEY"),
                              base_url=settings.base_url or os.environ.get("OPENAI_BASE_URL"),
                              timeout=settings.timeout, http=settings.http)

    return make


def _anthropic(settings: ProviderSettings) -> Provider:
    from llmspell.llm.anthropic_provider import AnthropicProvider

    return AnthropicProvider(api_key=_secret(settings, "ANTHROPIC_API_KEY"),
                             base_url=settings.base_url or os.environ.get("ANTHROPIC_BASE_URL"),
                             timeout=settings.timeout, http=settings.http)


def _local(settings: ProviderSettings) -> Provider:
    from llmspell.llm.openai_provider import OpenAIProvider

    url = settings.base_url or os.environ.get("LLMSPELL_LOCAL_LLM_URL")
    if not url:
        raise LlmspellError("provider 'local' needs a server: set LLMSPELL_LOCAL_LLM_URL "
                            "(e.g. http://127.0.0.1:8765/v1) or its base_url")
    return OpenAIProvider(name="local", api="chat", base_url=url, timeout=settings.timeout,
                          http=settings.http,
                          api_key=_secret(settings, "LLMSPELL_LOCAL_LLM_KEY") or "local")


def _scripted(settings: ProviderSettings) -> Provider:
    from llmspell.llm.scripted import ScriptedProvider

    return ScriptedProvider(scenario=settings.scenario)


class ProviderRegistry:
    """Factories by provider name, and one provider instance per name once made."""

    def __init__(self, settings: dict[str, ProviderSettings] | None = None) -> None:
        self.settings = dict(settings or {})
        self._factories: dict[str, Factory] = {
            "openai": _openai("responses", "openai"),
            "openai-chat": _openai("chat", "openai-chat"),
            "anthropic": _anthropic,
            "local": _local,
            "scripted": _scripted,
        }
        self._instances: dict[str, Provider] = {}

    def register(self, name: str, factory: Factory | Provider,
                 settings: ProviderSettings | None = None) -> None:
        """Add a provider (a factory taking ProviderSettings, or a ready instance)."""
        if isinstance(factory, Provider):
            instance = factory
            self._factories[name] = lambda _s: instance
        else:
            self._factories[name] = factory
        if settings is not None:
            self.settings[name] = settings
        self._instances.pop(name, None)

    def names(self) -> list[str]:
        return sorted(self._factories)

    def settings_for(self, name: str) -> ProviderSettings:
        return self.settings.get(name) or ProviderSettings()

    def get(self, name: str) -> Provider:
        provider = self._instances.get(name)
        if provider is None:
            factory = self._factories.get(name)
            if factory is None:
                hint = difflib.get_close_matches(name, self._factories, n=1)
                more = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise UnknownProvider(f"unknown provider {name!r}{more}; known: "
                                      f"{', '.join(self.names())}")
            provider = self._instances[name] = factory(self.settings_for(name))
        return provider

    async def aclose(self) -> None:
        """Close the providers' clients of the running loop (those that hold any). A provider
        that fails to close is logged and the others are still closed."""
        for name, provider in self._instances.items():
            close = getattr(provider, "aclose", None)
            try:
                if close is not None:
                    await close()
            except Exception as exc:
                get_logger(component="providers").warning(
                    "provider did not close cleanly", provider=name, error=repr(exc))

    async def warm(self, models: Iterable[str]) -> None:
        """Make the providers of `models` now (importing their SDKs) and their clients for the
        running loop, so that a first call costs what any call does. What cannot be made is
        left for that first call to report."""
        for model in dict.fromkeys(models):
            try:
                provider, _ = self.resolve(model)
                warm = getattr(provider, "warm", None)
                if warm is not None:
                    await warm()
            except Exception as exc:
                get_logger(component="providers").info(
                    "provider not warmed", model=model, error=repr(exc))

    def resolve(self, model: str) -> tuple[Provider, str]:
        """The provider and the provider's own model name of a 'provider:model' string."""
        provider, name = split_model(model)
        return self.get(provider), name


default_registry = ProviderRegistry()


def register_provider(name: str, factory: Factory | Provider,
                      settings: ProviderSettings | None = None) -> None:
    default_registry.register(name, factory, settings)
