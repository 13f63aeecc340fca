"""The filesystem tools on real files in a temporary root (with a link pointing outside it),
called through Tool.invoke as an agent calls them."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmspell.tools import SandboxViolation, Tool, ToolArgumentError, ToolError
from llmspell.tools.builtin import filesystem as fs
from llmspell.tools.sandbox import rule_of
from tests.tools.conftest import Ctx


@pytest.fixture
def box(make_ctx: Callable[..., Ctx]) -> Ctx:
    c = make_ctx()
    root = Path(c.ctx.sandbox.root or "")
    (root / "docs").mkdir()
    (root / "docs" / "a.txt").write_text("alpha\nbeta\ngamma\ndelta\n")
    (root / "docs" / "b.md").write_text("# Title\nsee alpha here\n")
    (root / "docs" / ".hidden").write_text("alpha hidden\n")
    (root / "bin.dat").write_bytes(b"\x00\x01\x02binary")
    outside = root.parent / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "secret.txt").write_text("top secret alpha\n")
    (root / "escape").symlink_to(outside / "secret.txt")
    (root / "escape_dir").symlink_to(outside)
    return c


def root_of(c: Ctx) -> Path:
    return Path(c.ctx.sandbox.root or "")


async def call(tool: Tool, c: Ctx, **arguments: Any) -> Any:
    return await tool.invoke(arguments, c.ctx)


async def refusal(tool: Tool, c: Ctx, **arguments: Any) -> str:
    with pytest.raises(SandboxViolation) as caught:
        await call(tool, c, **arguments)
    rule = rule_of(caught.value)
    assert rule is not None
    assert c.refusals()[-1]["rule"] == rule and c.refusals()[-1]["tool"] == tool.name
    return rule


# -- read_file --------------------------------------------------------------------------------


async def test_read_file_windows_and_encodings(box: Ctx) -> None:
    whole = await call(fs.ReadFile(), box, path="docs/a.txt")
    assert whole["content"] == "alpha\nbeta\ngamma\ndelta\n" and not whole["truncated"]
    window = await call(fs.ReadFile(), box, path="docs/a.txt", start_line=2, max_lines=2)
    assert window["content"] == "beta\ngamma\n" and window["next_line"] == 4
    capped = await call(fs.ReadFile(), box, path="docs/a.txt", max_bytes=8)
    assert capped["content"] == "alpha\nbe" and capped["truncated"]
    raw = await call(fs.ReadFile(), box, path="bin.dat", encoding="base64")
    assert base64.b64decode(raw["content"]) == b"\x00\x01\x02binary"
    (root_of(box) / "latin.txt").write_bytes("café\n".encode("latin-1"))
    assert (await call(fs.ReadFile(), box, path="latin.txt", encoding="latin-1")
            )["content"] == "café\n"


async def test_read_file_bad_inputs(box: Ctx) -> None:
    with pytest.raises(ToolError, match="no such file"):
        await call(fs.ReadFile(), box, path="missing.txt")
    with pytest.raises(ToolError, match="binary"):
        await call(fs.ReadFile(), box, path="bin.dat")
    with pytest.raises(ToolError, match="unknown encoding"):
        await call(fs.ReadFile(), box, path="docs/a.txt", encoding="klingon")
    with pytest.raises(ToolError, match="is a directory"):
        await call(fs.ReadFile(), box, path="docs")
    with pytest.raises(ToolArgumentError, match="start_line"):
        await call(fs.ReadFile(), box, path="docs/a.txt", start_line=0)
    assert await refusal(fs.ReadFile(), box, path="escape") == "symlink-escape"
    assert await refusal(fs.ReadFile(), box, path="escape_dir/secret.txt") == "symlink-escape"
    assert await refusal(fs.ReadFile(), box, path="../outside/secret.txt") == "path-escape"


# -- write_file and append_file ---------------------------------------------------------------


async def test_write_file_is_atomic_and_keeps_permissions(box: Ctx) -> None:
    done = await call(fs.WriteFile(), box, path="new/deep/note.txt", content="hello")
    assert done == {"path": "new/deep/note.txt", "bytes_written": 5, "created": True}
    target = root_of(box) / "new" / "deep" / "note.txt"
    target.chmod(0o600)
    await call(fs.WriteFile(), box, path="new/deep/note.txt", content="héllo again")
    assert target.read_text() == "héllo again" and (target.stat().st_mode & 0o777) == 0o600
    assert os.listdir(target.parent) == ["note.txt"]  # no temp file left behind
    await call(fs.WriteFile(), box, path="img.bin", content=base64.b64encode(b"\x00\xff").decode(),
               encoding="base64")
    assert (root_of(box) / "img.bin").read_bytes() == b"\x00\xff"


async def test_write_file_bad_inputs(box: Ctx, make_ctx: Callable[..., Ctx]) -> None:
    with pytest.raises(ToolError, match="already exists"):
        await call(fs.WriteFile(), box, path="docs/a.txt", content="x", overwrite=False)
    with pytest.raises(ToolError, match="parent directory does not exist"):
        await call(fs.WriteFile(), box, path="nope/x.txt", content="x", create_dirs=False)
    with pytest.raises(ToolError, match="not valid base64"):
        await call(fs.WriteFile(), box, path="x.bin", content="%%%", encoding="base64")
    with pytest.raises(ToolArgumentError, match="content"):
        await call(fs.WriteFile(), box, path="x.txt")
    # A link to a file outside: writing through it is refused, and the file is untouched.
    assert await refusal(fs.WriteFile(), box, path="escape", content="pwned") == "symlink-escape"
    assert (root_of(box).parent / "outside" / "secret.txt").read_text() == "top secret alpha\n"
    read_only = make_ctx(root=box.ctx.sandbox.root, read_only=True)
    assert await refusal(fs.WriteFile(), read_only, path="r.txt", content="x") == "read-only"


async def test_concurrent_appends_are_all_kept(box: Ctx) -> None:
    await asyncio.gather(*(call(fs.AppendFile(), box, path="log/events.log", content=f"{i}\n")
                           for i in range(20)))
    lines = (root_of(box) / "log" / "events.log").read_text().splitlines()
    assert sorted(lines, key=int) == [str(i) for i in range(20)]
    done = await call(fs.AppendFile(), box, path="log/events.log", content="end\n")
    assert done["bytes_appended"] == 4 and done["size"] == (root_of(box) / "log" /
                                                             "events.log").stat().st_size


async def test_append_file_bad_inputs(box: Ctx) -> None:
    with pytest.raises(ToolError, match="no such file"):
        await call(fs.AppendFile(), box, path="absent.log", content="x", create=False)
    with pytest.raises(ToolError, match="is a directory"):
        await call(fs.AppendFile(), box, path="docs", content="x")
    assert await refusal(fs.AppendFile(), box, path="escape", content="x") == "symlink-escape"


# -- list_dir ---------------------------------------------------------------------------------


async def test_list_dir_globs_recursion_and_limits(box: Ctx) -> None:
    top = await call(fs.ListDir(), box)
    assert [e["path"] for e in top["entries"]] == ["bin.dat", "docs", "escape", "escape_dir"]
    assert {e["type"] for e in top["entries"]} == {"file", "directory", "symlink"}
    deep = await call(fs.ListDir(), box, recursive=True, pattern="*.txt")
    assert [e["path"] for e in deep["entries"]] == ["docs/a.txt"]  # the link is not entered
    hidden = await call(fs.ListDir(), box, path="docs", include_hidden=True)
    assert "docs/.hidden" in [e["path"] for e in hidden["entries"]]
    globbed = await call(fs.ListDir(), box, recursive=True, pattern="docs/**/*.md")
    assert [e["path"] for e in globbed["entries"]] == ["docs/b.md"]
    capped = await call(fs.ListDir(), box, recursive=True, max_entries=2)
    assert capped["count"] == 2 and capped["truncated"]
    dirs = await call(fs.ListDir(), box, type="directory", recursive=True)
    assert [e["path"] for e in dirs["entries"]] == ["docs"]


async def test_list_dir_bad_inputs(box: Ctx) -> None:
    with pytest.raises(ToolError, match="no such directory"):
        await call(fs.ListDir(), box, path="nowhere")
    with pytest.raises(ToolError, match="is a file"):
        await call(fs.ListDir(), box, path="docs/a.txt")
    with pytest.raises(ToolArgumentError, match="max_entries"):
        await call(fs.ListDir(), box, max_entries=0)
    assert await refusal(fs.ListDir(), box, path="escape_dir") == "symlink-escape"


# -- file_search ------------------------------------------------------------------------------


async def test_file_search_finds_lines_and_never_leaves_the_root(box: Ctx) -> None:
    found = await call(fs.FileSearch(), box, pattern=r"al(pha)")
    assert [(m["path"], m["line"], m["column"]) for m in found["matches"]] == [
        ("docs/a.txt", 1, 1), ("docs/b.md", 2, 5)]  # not .hidden, not through the links
    assert found["files_skipped"] == 1  # bin.dat is binary
    context = await call(fs.FileSearch(), box, pattern="GAMMA", ignore_case=True,
                         context_lines=1, glob="*.txt")
    assert context["matches"][0]["before"] == ["beta"] and context["matches"][0]["after"] == [
        "delta"]
    literal = await call(fs.FileSearch(), box, pattern="# T", literal=True)
    assert literal["count"] == 1
    one = await call(fs.FileSearch(), box, pattern="a", max_matches=1)
    assert one["count"] == 1 and one["truncated"]


async def test_file_search_bad_patterns(box: Ctx) -> None:
    with pytest.raises(ToolError, match="invalid regular expression"):
        await call(fs.FileSearch(), box, pattern="(unclosed")
    (root_of(box) / "docs" / "aaa.txt").write_text("a" * 30 + "\n")
    started = asyncio.get_running_loop().time()
    with pytest.raises(ToolError, match="catastrophically"):
        await call(fs.FileSearch(), box, pattern=r"(.*){1,32000}[bc]", timeout_s=0.3)
    assert asyncio.get_running_loop().time() - started < 5
    with pytest.raises(ToolArgumentError, match="pattern"):
        await call(fs.FileSearch(), box, pattern="")


# -- file_info --------------------------------------------------------------------------------


async def test_file_info_describes_files_dirs_and_links(box: Ctx) -> None:
    info = await call(fs.FileInfo(), box, path="docs/b.md")
    assert info["type"] == "file" and info["size"] == 23 and info["mime_type"] == "text/markdown"
    assert (await call(fs.FileInfo(), box, path="docs"))["entries"] == 3
    link = await call(fs.FileInfo(), box, path="escape")
    assert link["type"] == "symlink" and link["target_inside_root"] is False


async def test_file_info_bad_inputs(box: Ctx) -> None:
    with pytest.raises(ToolError, match="no such file"):
        await call(fs.FileInfo(), box, path="ghost")
    with pytest.raises(ToolArgumentError, match="path"):
        await call(fs.FileInfo(), box)
    assert await refusal(fs.FileInfo(), box, path="/etc/passwd") == "path-escape"


# -- copy_move and delete ---------------------------------------------------------------------


async def test_copy_and_move_files_and_directories(box: Ctx) -> None:
    root = root_of(box)
    await call(fs.CopyMove(), box, operation="copy", source="docs", destination="backup")
    assert (root / "backup" / "a.txt").read_text() == (root / "docs" / "a.txt").read_text()
    (root / "inbox").mkdir()
    moved = await call(fs.CopyMove(), box, operation="move", source="backup/a.txt",
                       destination="inbox")  # an existing directory: moved into it
    assert moved["destination"] == "inbox/a.txt" and not (root / "backup" / "a.txt").exists()
    renamed = await call(fs.CopyMove(), box, operation="move", source="inbox/a.txt",
                         destination="inbox/renamed.txt")
    assert renamed["destination"] == "inbox/renamed.txt"
    copied = await call(fs.CopyMove(), box, operation="copy", source="escape",
                        destination="escape_copy")
    assert copied["type"] == "symlink" and (root / "escape_copy").is_symlink()


async def test_copy_move_bad_inputs(box: Ctx) -> None:
    with pytest.raises(ToolError, match="already exists"):
        await call(fs.CopyMove(), box, operation="copy", source="docs/a.txt",
                   destination="docs/b.md")
    with pytest.raises(ToolError, match="into itself"):
        await call(fs.CopyMove(), box, operation="copy", source="docs", destination="docs/sub")
    with pytest.raises(ToolError, match="no such file"):
        await call(fs.CopyMove(), box, operation="move", source="nothing", destination="x")
    with pytest.raises(ToolArgumentError, match="operation"):
        await call(fs.CopyMove(), box, operation="link", source="a", destination="b")
    assert await refusal(fs.CopyMove(), box, operation="move", source=".",
                         destination="x") == "protected-root"
    assert await refusal(fs.CopyMove(), box, operation="copy", source="docs/a.txt",
                         destination="../stolen.txt") == "path-escape"
    # Overwriting a link that points outside replaces the link, never the file behind it.
    await call(fs.CopyMove(), box, operation="copy", source="docs/a.txt", destination="escape",
               overwrite=True)
    assert (root_of(box).parent / "outside" / "secret.txt").read_text() == "top secret alpha\n"
    assert not (root_of(box) / "escape").is_symlink()


async def test_delete_files_links_and_trees(box: Ctx) -> None:
    root = root_of(box)
    assert (await call(fs.Delete(), box, path="escape"))["type"] == "symlink"
    assert (root.parent / "outside" / "secret.txt").exists()  # the link went, not its target
    done = await call(fs.Delete(), box, path="docs", recursive=True)
    assert done["entries"] == 4 and not (root / "docs").exists()
    assert (await call(fs.Delete(), box, path="docs", missing_ok=True))["deleted"] is False


async def test_delete_bad_inputs(box: Ctx) -> None:
    with pytest.raises(ToolError, match="not empty"):
        await call(fs.Delete(), box, path="docs")
    with pytest.raises(ToolError, match="no such file"):
        await call(fs.Delete(), box, path="ghost")
    assert await refusal(fs.Delete(), box, path=".", recursive=True) == "protected-root"
    assert await refusal(fs.Delete(), box, path=str(root_of(box)), recursive=True) == (
        "protected-root")
    assert await refusal(fs.Delete(), box, path="escape_dir/secret.txt") == "symlink-escape"
    assert root_of(box).exists()


# -- watch_changes ----------------------------------------------------------------------------


async def test_watch_changes_reports_added_modified_removed(box: Ctx) -> None:
    first = await call(fs.WatchChanges(), box, path="docs")
    assert first["initial"] and not first["changed"] and first["entries"] == 2
    root = root_of(box)
    (root / "docs" / "new.txt").write_text("new")
    (root / "docs" / "a.txt").write_text("changed, and longer than before")
    (root / "docs" / "b.md").unlink()
    second = await call(fs.WatchChanges(), box, path="docs", token=first["token"])
    assert (second["added"], second["modified"], second["removed"]) == (
        ["docs/new.txt"], ["docs/a.txt"], ["docs/b.md"])
    quiet = await call(fs.WatchChanges(), box, path="docs", token=second["token"])
    assert not quiet["changed"]


async def test_watch_changes_waits_for_a_change(box: Ctx) -> None:
    first = await call(fs.WatchChanges(), box, path="docs")

    async def later() -> None:
        await asyncio.sleep(0.3)
        (root_of(box) / "docs" / "late.txt").write_text("late")

    writer = asyncio.create_task(later())
    seen = await call(fs.WatchChanges(), box, path="docs", token=first["token"], wait_s=5)
    await writer
    assert seen["added"] == ["docs/late.txt"]


async def test_watch_changes_bad_tokens(box: Ctx) -> None:
    with pytest.raises(ToolError, match="not a token"):
        await call(fs.WatchChanges(), box, token="garbage")
    token = (await call(fs.WatchChanges(), box, path="docs"))["token"]
    with pytest.raises(ToolError, match="another directory"):
        await call(fs.WatchChanges(), box, path=".", token=token)
    with pytest.raises(ToolArgumentError, match="wait_s"):
        await call(fs.WatchChanges(), box, wait_s=600)


def test_every_filesystem_tool_has_a_strict_described_schema() -> None:
    for t in fs.TOOLS:
        spec = t.spec()
        assert t.category == "filesystem" and len(t.description) > 40
        assert spec.parameters["additionalProperties"] is False
        assert all(p.get("description") for p in spec.parameters["properties"].values()), t.name
        assert "title" not in str(spec.parameters["properties"].get("path", {}))
    effects = {t.name: (str(t.side_effects), t.idempotent) for t in fs.TOOLS}
    assert effects["read_file"] == ("none", True) and effects["append_file"] == ("local", False)
    assert effects["write_file"] == ("local", True) and effects["copy_move"] == ("local", False)
