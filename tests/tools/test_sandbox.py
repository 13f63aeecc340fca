"""The sandbox policy itself: paths, URLs and addresses, commands, environment variables.

Decisions about private, link-local and metadata addresses are made here, on the policy, which
refuses before any connection exists; nothing in this file opens a socket.
"""

from __future__ import annotations

import os
import pickle
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmspell.actors.pool import error_from_wire, error_to_wire
from llmspell.tools import Sandbox, SandboxViolation, ToolContext, ToolError
from llmspell.tools.sandbox import Rule, rule_of
from llmspell.tools.sandbox import fs as sfs
from tests.tools.conftest import LOCAL

T = "test_tool"


def refused(fn: Callable[[], Any]) -> SandboxViolation:
    with pytest.raises(SandboxViolation) as caught:
        fn()
    return caught.value


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/ with a file, a subdirectory, links pointing inside and outside; outside/ beside."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    (root / "sub" / "a.txt").write_text("inside")
    (outside / "secret.txt").write_text("secret")
    (root / "out_link").symlink_to(outside / "secret.txt")
    (root / "out_dir").symlink_to(outside)
    (root / "in_link").symlink_to("sub/a.txt")
    (root / "dangling_out").symlink_to(outside / "new.txt")
    return root


# -- paths -----------------------------------------------------------------------------------


def test_paths_inside_the_root_resolve(tree: Path) -> None:
    sb = Sandbox(root=str(tree))
    assert sb.path(T, "sub/a.txt") == tree / "sub" / "a.txt"
    assert sb.path(T, str(tree / "sub" / "a.txt")) == tree / "sub" / "a.txt"  # absolute, inside
    assert sb.path(T, "sub/../sub/a.txt") == tree / "sub" / "a.txt"
    assert sb.path(T, ".") == tree
    assert sb.path(T, "in_link") == tree / "sub" / "a.txt"  # a link inside stays inside
    assert sb.path(T, "new/file.txt", write=True) == tree / "new" / "file.txt"


@pytest.mark.parametrize("path", ["../outside/secret.txt", "sub/../../outside", "/etc/passwd",
                                  "/", ".."])
def test_traversal_is_refused_as_path_escape(tree: Path, path: str) -> None:
    error = refused(lambda: Sandbox(root=str(tree)).path(T, path))
    assert rule_of(error) == "path-escape" and "sandbox rule 'path-escape'" in str(error)


@pytest.mark.parametrize("path", ["out_link", "out_dir/secret.txt", "out_dir", "dangling_out"])
def test_a_symlink_inside_the_root_pointing_outside_is_refused(tree: Path, path: str) -> None:
    sb = Sandbox(root=str(tree))
    error = refused(lambda: sb.path(T, path, write=True))
    assert rule_of(error) == "symlink-escape"
    assert error.__dict__["subject"] == path


def test_entry_is_the_link_itself_but_never_a_path_through_an_outside_link(tree: Path) -> None:
    sb = Sandbox(root=str(tree))
    assert sb.entry(T, "out_link") == tree / "out_link"  # delete or stat the link: fine
    assert rule_of(refused(lambda: sb.entry(T, "out_dir/secret.txt"))) == "symlink-escape"


def test_read_only_and_no_root(tree: Path) -> None:
    error = refused(lambda: Sandbox(root=str(tree), read_only=True).path(T, "x", write=True))
    assert rule_of(error) == "read-only"
    assert Sandbox(root=str(tree), read_only=True).path(T, "sub/a.txt").exists()
    assert rule_of(refused(lambda: Sandbox().path(T, "x"))) == "no-filesystem"
    with pytest.raises(ToolError, match="NUL"):
        Sandbox(root=str(tree)).path(T, "a\x00b")


def test_a_file_swapped_for_a_link_after_the_check_is_refused_when_opened(tree: Path) -> None:
    checked = Sandbox(root=str(tree)).path(T, "sub/a.txt")
    checked.unlink()
    checked.symlink_to(tree.parent / "outside" / "secret.txt")  # the race: after the check
    error = refused(lambda: sfs.open_file(T, tree, checked, os.O_RDONLY))
    assert rule_of(error) == "symlink-escape"


def test_a_directory_swapped_for_a_link_after_the_check_is_refused(tree: Path) -> None:
    outside = tree.parent / "outside"
    (outside / "a.txt").write_text("outside a")
    checked = Sandbox(root=str(tree)).path(T, "sub/a.txt")
    (tree / "sub").rename(tree / "old_sub")
    (tree / "sub").symlink_to(outside)  # the parent now leads outside
    assert rule_of(refused(lambda: sfs.open_file(T, tree, checked, os.O_RDONLY))) == (
        "symlink-escape")
    assert rule_of(refused(lambda: sfs.write_atomic(T, tree, checked, b"x"))) == (
        "symlink-escape")
    assert rule_of(refused(lambda: sfs.remove(T, tree, checked))) == "symlink-escape"
    assert (outside / "a.txt").read_text() == "outside a"


# -- URLs and addresses: decided before any connection ------------------------------------------

DEFAULT_REFUSED = [
    ("http://127.0.0.1/", "private-address", "127.0.0.1 is a loopback address"),
    ("http://[::1]:8080/", "private-address", "::1 is a loopback address"),
    ("http://[::ffff:127.0.0.1]/", "private-address", "(127.0.0.1) is a loopback"),
    ("http://2130706433/", "private-address", "127.0.0.1 is a loopback"),  # decimal
    ("http://0x7f000001/", "private-address", "127.0.0.1 is a loopback"),  # hex
    ("http://0177.0.0.1/", "private-address", "127.0.0.1 is a loopback"),  # octal
    ("http://0x7f.1/", "private-address", "127.0.0.1 is a loopback"),  # mixed, short
    ("http://127.1/", "private-address", "127.0.0.1 is a loopback"),
    ("http://10.0.0.1/", "private-address", "a private address"),
    ("http://172.16.5.4/", "private-address", "a private address"),
    ("http://192.168.1.1/", "private-address", "a private address"),
    ("http://[::ffff:192.168.1.1]/", "private-address", "a private address"),
    ("http://[fc00::1]/", "private-address", "a private address"),
    ("http://169.254.1.1/", "private-address", "a link-local address"),
    ("http://[fe80::1]/", "private-address", "a link-local address"),
    ("http://100.64.0.1/", "private-address", "CGNAT"),
    ("http://0.0.0.0/", "private-address", "unspecified"),
    ("http://224.0.0.1/", "private-address", "multicast"),
    ("http://240.0.0.1/", "private-address", "reserved"),
    ("http://[2002:7f00:1::]/", "private-address", "embedding 127.0.0.1"),  # 6to4
    ("http://169.254.169.254/latest/meta-data/", "metadata-address", "cloud metadata"),
    ("http://[fd00:ec2::254]/", "metadata-address", "cloud metadata"),
    ("http://[::ffff:169.254.169.254]/", "metadata-address", "cloud metadata"),
    ("http://metadata.google.internal/", "metadata-address", "cloud metadata"),
    ("file:///etc/passwd", "scheme", "only http and https"),
    ("ftp://example.com/x", "scheme", "only http and https"),
    ("gopher://127.0.0.1:70/", "scheme", "only http and https"),
]


@pytest.mark.parametrize(("url", "rule", "words"), DEFAULT_REFUSED)
def test_the_default_policy_refuses(url: str, rule: str, words: str) -> None:
    error = refused(lambda: Sandbox().check_url(T, url))
    assert rule_of(error) == rule, str(error)
    assert words in str(error) and f"sandbox rule '{rule}'" in str(error)


def test_localhost_is_judged_by_the_address_it_resolves_to() -> None:
    error = refused(lambda: Sandbox().check_url(T, "http://localhost:9/"))
    assert rule_of(error) == "private-address"
    assert "localhost resolves to 127.0.0.1" in str(error)


@pytest.mark.parametrize("url", [
    "http://127.0.0.2/", "http://0x7f000002/", "http://0177.0.0.2/", "http://2130706434/",
    "http://[::1]/", "http://[::ffff:127.0.0.2]/", "http://127.0.0.1.nip.invalid/",
])
def test_the_allow_list_opens_exactly_what_it_names(url: str) -> None:
    with pytest.raises(ToolError) as caught:  # refused, or (the .invalid name) unresolvable
        Sandbox(**LOCAL).check_url(T, url)
    if "invalid" not in url:
        assert rule_of(caught.value) == "private-address"


def test_allowed_addresses_are_pinned_in_their_canonical_form() -> None:
    sb = Sandbox(**LOCAL)
    assert sb.check_url(T, "http://127.0.0.1:8/x").addresses == ("127.0.0.1",)
    decimal = sb.check_url(T, "http://2130706433:8/x?q=1")
    assert decimal.url == "http://127.0.0.1:8/x?q=1" and decimal.addresses == ("127.0.0.1",)
    mapped = sb.check_url(T, "http://[::ffff:127.0.0.1]:8/")
    assert mapped.addresses == ("127.0.0.1",)  # connects over IPv4 to the checked address


def test_private_network_allowed_still_refuses_metadata_unless_listed() -> None:
    open_sb = Sandbox(allow_private_network=True)
    assert open_sb.check_url(T, "http://10.1.2.3/").addresses == ("10.1.2.3",)
    assert rule_of(refused(lambda: open_sb.check_url(T, "http://169.254.169.254/"))) == (
        "metadata-address")
    listed = Sandbox(allowed_private_hosts=["169.254.169.254"])
    assert listed.check_url(T, "http://169.254.169.254/").addresses == ("169.254.169.254",)


def test_allowed_hosts_restrict_and_no_network_refuses_all() -> None:
    from llmspell.tools.sandbox.net import check_static

    sb = Sandbox(allowed_hosts=["example.com", "*.example.org", "203.0.113.9"])
    assert check_static(sb, T, "https://example.com/a").host == "example.com"
    assert check_static(sb, T, "https://docs.example.org/").host == "docs.example.org"
    assert check_static(sb, T, "http://203.0.113.9/").ip is not None
    for url in ("https://evil.com/", "https://example.org/", "https://example.com.evil.com/"):
        assert rule_of(refused(lambda u=url: check_static(sb, T, u))) == "host-not-allowed"
    error = refused(lambda: Sandbox(allow_network=False).check_url(T, "https://example.com/"))
    assert rule_of(error) == "no-network"


def test_names_are_judged_by_every_address_after_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = {"internal.test": ["10.1.2.3"], "mixed.test": ["93.184.215.14", "192.168.0.7"],
               "public.test": ["93.184.215.14"]}
    real = socket.getaddrinfo

    def fake(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host in answers:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port or 0))
                    for a in answers[host]]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    error = refused(lambda: Sandbox().check_url(T, "http://internal.test/"))
    assert "internal.test resolves to 10.1.2.3" in str(error)
    assert "192.168.0.7" in str(refused(lambda: Sandbox().check_url(T, "http://mixed.test/")))
    assert Sandbox().check_url(T, "http://public.test/").addresses == ("93.184.215.14",)
    opened = Sandbox(allowed_private_hosts=["internal.test"])  # a trusted internal name
    assert opened.check_url(T, "http://internal.test/").addresses == ("10.1.2.3",)


@pytest.mark.parametrize("url", ["http://foo.1/", "http://[::zz]/", "http:///path",
                                 "http://a b.com/", "http://host:99999/"])
def test_malformed_urls_are_tool_errors_not_refusals(url: str) -> None:
    with pytest.raises(ToolError) as caught:
        Sandbox().check_url(T, url)
    assert not isinstance(caught.value, SandboxViolation)
    assert "not a valid URL" in str(caught.value)


# -- commands and environment -------------------------------------------------------------------


def test_commands_are_off_unless_allow_listed(tmp_path: Path) -> None:
    assert rule_of(refused(lambda: Sandbox().check_command(T, "ls"))) == "exec-disabled"
    sb = Sandbox(allowed_commands=["sh", sys.executable])
    assert rule_of(refused(lambda: sb.check_command(T, "ls"))) == "command-not-allowed"
    assert Path(sb.check_command(T, "sh")).name == "sh"
    assert sb.check_command(T, sys.executable) == os.path.realpath(sys.executable)
    fake = tmp_path / "sh"  # a script the model wrote, named like an allowed command
    fake.write_text("#!/bin/sh\necho pwned\n")
    fake.chmod(0o755)
    assert rule_of(refused(lambda: sb.check_command(T, str(fake)))) == "command-not-allowed"


def test_environment_variables_need_the_allow_list() -> None:
    sb = Sandbox(allowed_env=["LANG", "MYAPP_*"])
    sb.check_env(T, "LANG")
    sb.check_env(T, "MYAPP_MODE")
    error = refused(lambda: sb.check_env(T, "OPENAI_API_KEY"))
    assert rule_of(error) == "env-not-allowed" and "OPENAI_API_KEY" in str(error)


# -- the policy and its errors travel ----------------------------------------------------------


def test_the_policy_and_a_refusal_cross_process_boundaries(tree: Path) -> None:
    sb = Sandbox(root=str(tree), allowed_private_hosts=["127.0.0.1"], allowed_env=["LANG"],
                 max_redirects=2)
    again = ToolContext.from_wire(ToolContext(sandbox=sb).to_wire()).sandbox
    assert again == sb
    error = refused(lambda: sb.path(T, "../x"))
    assert rule_of(pickle.loads(pickle.dumps(error))) == "path-escape"  # Ray pickles errors
    back = error_from_wire(error_to_wire(error, T))  # a tool pool packs them
    assert isinstance(back, SandboxViolation) and rule_of(back) == "path-escape"
    assert str(back) == str(error)


def test_every_rule_has_a_kebab_case_name() -> None:
    assert all(r.value == r.value.lower() and " " not in r.value for r in Rule)


async def test_every_tools_refusal_is_an_event(tmp_path: Path) -> None:
    from llmspell.tools.builtin import builtin_registry

    events: list[tuple[str, dict[str, Any]]] = []
    ctx = ToolContext(sandbox=Sandbox(root=str(tmp_path)),
                      emit=lambda t, p: events.append((t, p)))
    with pytest.raises(SandboxViolation):  # a utility tool, not a SandboxedTool subclass
        await builtin_registry().get("hash").invoke({"path": "../../etc/passwd"}, ctx)
    [(topic, payload)] = events
    assert topic == "sandbox.refused" and payload["tool"] == "hash" and payload["rule"]
