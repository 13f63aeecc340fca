"""The `llmspell` command."""
