"""A scenario reply can quote what it was asked: `${name}` is a named group of its regex."""

from __future__ import annotations

from llmspell.llm.scenario import Prompt, RuleBook, Scenario


def test_named_groups_fill_reply_text_and_tool_arguments() -> None:
    book = RuleBook(Scenario.parse({"rules": [
        {"match": {"regex": r"Read (?P<url>\S+) about (?P<topic>\w+)"},
         "reply": {"text": "reading ${url}", "tool_calls": [
             {"name": "web_fetch", "arguments": {"url": "${url}", "tags": ["${topic}", 1]}}]}},
        {"match": {"regex": "plain"}, "reply": "no ${groups} here"}]}))
    hit = book.pick(Prompt(api="chat", model="m", last_user="Read http://127.0.0.1:9/a about ray"))
    assert hit is not None and hit.rule.reply is not None
    assert hit.rule.reply.text == "reading http://127.0.0.1:9/a"
    assert hit.rule.reply.tool_calls[0].arguments == {"url": "http://127.0.0.1:9/a",
                                                      "tags": ["ray", 1]}
    plain = book.pick(Prompt(api="chat", model="m", last_user="plain words"))
    assert plain is not None and plain.rule.reply is not None
    assert plain.rule.reply.text == "no ${groups} here"  # unknown names stay as written
