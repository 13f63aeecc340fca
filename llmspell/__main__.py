"""`python -m llmspell` is the `llmspell` command."""

from llmspell.cli.main import main

main()
