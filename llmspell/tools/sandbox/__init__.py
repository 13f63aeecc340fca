"""The sandbox a job's tools run in: a filesystem root, a network policy, a process allow-list.

    policy.py   Sandbox, the policy (plain data: it travels with a call to a pool replica)
    rules.py    the rules by name, the SandboxViolation a refusal becomes, the refusal event
    fs.py       paths below the root; opens and writes checked again after they happen
    net.py      URL and address decisions (after DNS, every address, every host form)
    http.py     an HTTP client that connects only to checked addresses, redirect by redirect
    exec.py     allow-listed processes: no shell, a small environment, timeout, output cap
    tool.py     SandboxedTool, the base of the built-in tools that report refusals as events

http.py and tool.py are imported on use (an HTTP client is not needed to build a policy).
"""

from llmspell.tools.sandbox.policy import Sandbox
from llmspell.tools.sandbox.rules import REFUSED_TOPIC, Rule, publish_refusal, refuse, rule_of

__all__ = ["REFUSED_TOPIC", "Rule", "Sandbox", "publish_refusal", "refuse", "rule_of"]
