"""Archive and media tools on files made here: zip and tar round trips, zip-slip and link
escapes, zip and tar bombs (refused from their headers: nothing big is ever written), images
with EXIF, PDFs with text and metadata."""

from __future__ import annotations

import io
import os
import struct
import tarfile
import time
import zipfile
import zlib
from pathlib import Path

import pytest
from PIL import Image
from pypdf import PdfReader, PdfWriter

from llmspell.tools import SandboxViolation, ToolArgumentError, ToolError
from llmspell.tools.builtin.archives import archive, image_info, page_numbers, pdf_text
from tests.tools.helpers_data import ESCAPE, call, context


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.fixture
def project(tmp_path: Path) -> Path:
    src = tmp_path / "project"
    (src / "docs").mkdir(parents=True)
    (src / "main.py").write_text("print('hi')\n")
    (src / "docs" / "readme.md").write_text("# Readme\n" * 50)
    (src / "data.bin").write_bytes(os.urandom(5000))
    return src


# -- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["out.zip", "out.tar", "out.tar.gz", "out.tar.bz2",
                                  "out.tar.xz"])
async def test_create_list_and_extract_round_trip(tmp_path: Path, project: Path,
                                                  name: str) -> None:
    ctx = context(tmp_path)
    made = await call(archive, ctx, operation="create", path=f"build/{name}", files=["project"])
    assert made["entries"] == 3 and made["bytes"] > 0
    listed = await call(archive, ctx, operation="list", path=f"build/{name}")
    assert sorted(e["name"] for e in listed["entries"]) == [
        "project/data.bin", "project/docs/readme.md", "project/main.py"]
    assert listed["total_bytes"] == sum(len(b) for b in files_under(project).values())
    out = await call(archive, ctx, operation="extract", path=f"build/{name}",
                     destination="unpacked")
    assert out["files"] == 3
    assert files_under(tmp_path / "unpacked" / "project") == files_under(project)


async def test_create_with_a_base_dir_and_default_destination(tmp_path: Path,
                                                              project: Path) -> None:
    ctx = context(tmp_path)
    await call(archive, ctx, operation="create", path="p.tgz", files=["project/docs"],
               base_dir="project")
    out = await call(archive, ctx, operation="extract", path="p.tgz")
    assert out["destination"] == "p"
    assert (tmp_path / "p" / "docs" / "readme.md").read_text().startswith("# Readme")


async def test_extract_keeps_links_that_stay_inside(tmp_path: Path) -> None:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tf:
        _add(tf, "dir/file.txt", b"content")
        _link(tf, "dir/alias.txt", "file.txt")
        _link(tf, "top", "dir")
        _add(tf, "top/through.txt", b"via link")  # written through the link, inside
        _link(tf, "copy.txt", "dir/file.txt", tarfile.LNKTYPE)
    (tmp_path / "links.tar").write_bytes(data.getvalue())
    await call(archive, context(tmp_path), operation="extract", path="links.tar",
               destination="x")
    assert (tmp_path / "x/dir/alias.txt").read_text() == "content"
    assert (tmp_path / "x/copy.txt").read_text() == "content"
    assert (tmp_path / "x/dir/through.txt").read_text() == "via link"


async def test_extract_refuses_to_overwrite_unless_asked(tmp_path: Path, project: Path) -> None:
    ctx = context(tmp_path)
    await call(archive, ctx, operation="create", path="p.zip", files=["project/main.py"])
    (tmp_path / "out/project").mkdir(parents=True)
    (tmp_path / "out/project/main.py").write_text("mine")
    with pytest.raises(ToolError, match=r"'out/project/main.py' already exists \(set "
                                        r"overwrite"):
        await call(archive, ctx, operation="extract", path="p.zip", destination="out")
    assert (tmp_path / "out/project/main.py").read_text() == "mine"
    await call(archive, ctx, operation="extract", path="p.zip", destination="out",
               overwrite=True)
    assert (tmp_path / "out/project/main.py").read_text() == "print('hi')\n"


# -- zip-slip and link escapes -------------------------------------------------------------------


def _zip(path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries:
            zf.writestr(name, data)


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _link(tf: tarfile.TarFile, name: str, target: str,
          kind: bytes = tarfile.SYMTYPE) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tf.addfile(info)


def _tar(path: Path, build: list[tuple[str, str | bytes]]) -> None:
    """Entries as (name, bytes) for files or (name, "->target") for symlinks."""
    with tarfile.open(path, "w") as tf:
        for name, body in build:
            if isinstance(body, str):
                _link(tf, name, body.removeprefix("->"))
            else:
                _add(tf, name, body)


def _symlink_zip_entry(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.external_attr = 0o120777 << 16  # a symlink, as Info-ZIP stores it
    return info, target.encode()


@pytest.mark.parametrize(("entries", "reason"), [
    ([("ok.txt", b"fine"), ("../evil.txt", b"x")], r"climbs out of the destination"),
    ([("ok.txt", b"fine"), ("a/../../evil.txt", b"x")], r"climbs out of the destination"),
    ([("/tmp/evil.txt", b"x")], r"has an absolute path"),
    ([("C:\\Windows\\evil.txt", b"x")], r"has an absolute path"),
    ([("..\\evil.txt", b"x")], r"climbs out of the destination"),
    ([_symlink_zip_entry("link", "../../etc")], r"link 'link' -> '../../etc' points outside"),
    ([_symlink_zip_entry("link", "/etc")], r"link 'link' -> '/etc' points outside"),
])
async def test_zip_slip_is_refused_before_anything_is_written(
        tmp_path: Path, entries: list[tuple[str | zipfile.ZipInfo, bytes]], reason: str) -> None:
    _zip(tmp_path / "slip.zip", entries)
    with pytest.raises(ToolError, match=reason):
        await call(archive, context(tmp_path), operation="extract", path="slip.zip",
                   destination="out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil.txt").exists()
    assert not (tmp_path.parent / "evil.txt").exists()


@pytest.mark.parametrize(("build", "reason"), [
    ([("link", "->../../outside"), ("link/evil.txt", b"x")], r"points outside"),
    ([("a", "->."), ("b", "->a/..")], r"link 'b' -> 'a/..' points outside"),
    ([("a", "->sub"), ("sub", "->..")], r"points outside"),
    ([("dir/x", b"data"), ("hard", "->../x")], r"points outside"),
])
async def test_tar_link_escapes_are_refused(tmp_path: Path, build: list[tuple[str, str | bytes]],
                                            reason: str) -> None:
    _tar(tmp_path / "links.tar", build)
    with pytest.raises(ToolError, match=reason):
        await call(archive, context(tmp_path), operation="extract", path="links.tar",
                   destination="out")
    assert files_under(tmp_path / "out") == {} if (tmp_path / "out").exists() else True


async def test_tar_hard_link_outside_and_special_files_are_refused(tmp_path: Path) -> None:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tf:
        _link(tf, "passwd", "/etc/passwd", tarfile.LNKTYPE)
    (tmp_path / "hard.tar").write_bytes(data.getvalue())
    with pytest.raises(ToolError, match=r"link 'passwd' -> '/etc/passwd' points outside"):
        await call(archive, context(tmp_path), operation="extract", path="hard.tar")
    fifo = io.BytesIO()
    with tarfile.open(fileobj=fifo, mode="w") as tf:
        info = tarfile.TarInfo("pipe")
        info.type = tarfile.FIFOTYPE
        tf.addfile(info)
    (tmp_path / "fifo.tar").write_bytes(fifo.getvalue())
    with pytest.raises(ToolError, match="device, FIFO or other special file"):
        await call(archive, context(tmp_path), operation="extract", path="fifo.tar")


async def test_an_existing_symlink_in_the_destination_cannot_carry_a_write_out(
        tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "dest").mkdir(parents=True)
    outside.mkdir()
    (root / "dest" / "sub").symlink_to(outside)
    _zip(root / "a.zip", [("sub/evil.txt", b"x")])
    with pytest.raises(SandboxViolation, match=ESCAPE):
        await call(archive, context(root), operation="extract", path="a.zip", destination="dest")
    assert list(outside.iterdir()) == []


# -- bombs ---------------------------------------------------------------------------------------


def _inflate_claims(path: Path, claimed: int) -> None:
    """Rewrite a one-entry stored zip so its headers claim `claimed` uncompressed bytes."""
    raw = bytearray(path.read_bytes())
    local = raw.find(b"PK\x03\x04")
    central = raw.find(b"PK\x01\x02")
    struct.pack_into("<I", raw, local + 22, claimed)
    struct.pack_into("<I", raw, central + 24, claimed)
    path.write_bytes(bytes(raw))


async def test_a_zip_whose_headers_claim_gigabytes_is_refused(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "claims.zip", "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("huge.bin", b"small")
    _inflate_claims(tmp_path / "claims.zip", 4_000_000_000)
    assert (tmp_path / "claims.zip").stat().st_size < 200
    ctx = context(tmp_path)
    listed = await call(archive, ctx, operation="list", path="claims.zip")
    assert listed["total_bytes"] == 4_000_000_000
    with pytest.raises(ToolError, match=r"expands to 4000000000 bytes, over the limit of "
                                        r"500000000; refused before writing anything"):
        await call(archive, ctx, operation="extract", path="claims.zip", destination="out")
    assert not (tmp_path / "out").exists()


async def test_a_highly_compressed_zip_bomb_is_refused_by_its_ratio(tmp_path: Path) -> None:
    zeros = b"\0" * 20_000_000
    _zip(tmp_path / "bomb.zip", [("zeros.bin", zeros)])
    assert (tmp_path / "bomb.zip").stat().st_size < 100_000
    start = time.monotonic()
    with pytest.raises(ToolError, match=r"entry 'zeros.bin' expands \d+:1 .* over the 200:1 "
                                        r"limit: a zip bomb\?"):
        await call(archive, context(tmp_path), operation="extract", path="bomb.zip",
                   destination="out")
    assert time.monotonic() - start < 2
    assert not (tmp_path / "out").exists()


async def test_entry_count_and_total_size_caps(tmp_path: Path) -> None:
    _zip(tmp_path / "many.zip", [(f"f{i}.txt", b"x") for i in range(30)])
    ctx = context(tmp_path)
    with pytest.raises(ToolError, match="the archive has 30 entries; the limit is 10"):
        await call(archive, ctx, operation="extract", path="many.zip", max_entries=10)
    big = io.BytesIO()
    with tarfile.open(fileobj=big, mode="w:gz") as tf:
        _add(tf, "a.bin", os.urandom(600_000))
        _add(tf, "b.bin", os.urandom(600_000))
        _add(tf, "never-read.bin", os.urandom(600_000))
    (tmp_path / "big.tar.gz").write_bytes(big.getvalue())
    with pytest.raises(ToolError, match="expands to more than 1000000 bytes"):
        await call(archive, ctx, operation="extract", path="big.tar.gz", max_total_mb=1)
    assert not (tmp_path / "big").exists()


async def test_a_gzip_tar_bomb_is_refused_by_its_overall_ratio(tmp_path: Path) -> None:
    bomb = io.BytesIO()
    with tarfile.open(fileobj=bomb, mode="w:gz") as tf:
        _add(tf, "zeros.bin", b"\0" * 5_000_000)
    (tmp_path / "bomb.tar.gz").write_bytes(bomb.getvalue())
    with pytest.raises(ToolError, match="over the 200:1 limit: a compression bomb"):
        await call(archive, context(tmp_path), operation="extract", path="bomb.tar.gz")


# -- archive bad inputs --------------------------------------------------------------------------


async def test_archive_bad_inputs(tmp_path: Path, project: Path) -> None:
    ctx = context(tmp_path)
    (tmp_path / "notes.txt").write_text("just text")
    with pytest.raises(ToolError, match=r"'notes.txt' is not a zip or tar archive"):
        await call(archive, ctx, operation="list", path="notes.txt")
    with pytest.raises(ToolError, match=r"'nope.zip': no such file"):
        await call(archive, ctx, operation="list", path="nope.zip")
    with pytest.raises(ToolError, match=r"cannot tell the format from 'out.rar'"):
        await call(archive, ctx, operation="create", path="out.rar", files=["project"])
    with pytest.raises(ToolError, match="create needs 'files'"):
        await call(archive, ctx, operation="create", path="out.zip")
    with pytest.raises(ToolError, match="'missing': no such file or directory"):
        await call(archive, ctx, operation="create", path="out.zip", files=["missing"])
    with pytest.raises(ToolArgumentError, match="operation"):
        await call(archive, ctx, operation="explode", path="out.zip")
    with pytest.raises(SandboxViolation, match="read-only"):
        await call(archive, context(tmp_path, read_only=True), operation="create",
                   path="o.zip", files=["project"])


async def test_create_refuses_a_symlink_pointing_outside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "dir").mkdir(parents=True)
    (tmp_path / "secret.txt").write_text("secret")
    (root / "dir" / "leak.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(SandboxViolation, match=ESCAPE):
        await call(archive, context(root), operation="create", path="o.zip", files=["dir"])
    assert not (root / "o.zip").exists()


# -- image_info ----------------------------------------------------------------------------------


async def test_image_info_with_exif(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x010F] = "Canon"  # Make
    exif[0x0110] = "EOS 5D"  # Model
    exif[0x0112] = 6  # Orientation
    exif.get_ifd(0x8769)[0x9003] = "2024:05:01 10:00:00"  # DateTimeOriginal
    exif.get_ifd(0x8825)[1] = "N"  # GPSLatitudeRef
    Image.new("RGB", (64, 32), "red").save(tmp_path / "photo.jpg", exif=exif.tobytes())
    out = await call(image_info, context(tmp_path), path="photo.jpg")
    assert (out["format"], out["width"], out["height"], out["mode"]) == ("JPEG", 64, 32, "RGB")
    assert out["exif"]["Make"] == "Canon" and out["exif"]["Model"] == "EOS 5D"
    assert out["exif"]["Orientation"] == 6
    assert out["exif"]["DateTimeOriginal"] == "2024:05:01 10:00:00"
    assert out["exif"]["GPSInfo"] == {"GPSLatitudeRef": "N"}


async def test_image_info_png_dpi_and_animated_gif(tmp_path: Path) -> None:
    Image.new("RGBA", (10, 20)).save(tmp_path / "a.png", dpi=(300, 300))
    png = await call(image_info, context(tmp_path), path="a.png")
    assert png["format"] == "PNG" and png["mode"] == "RGBA"
    assert png["info"]["dpi"] == [pytest.approx(300, abs=0.1)] * 2
    frames = [Image.new("RGB", (8, 8), color) for color in ("red", "green", "blue")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    gif = await call(image_info, context(tmp_path), path="anim.gif")
    assert gif["frames"] == 3 and gif["animated"] is True


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


async def test_image_info_bad_inputs(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    (tmp_path / "fake.png").write_text("not an image")
    with pytest.raises(ToolError, match=r"'fake.png' is not an image format"):
        await call(image_info, ctx, path="fake.png")
    with pytest.raises(ToolError, match=r"'gone.png': no such file"):
        await call(image_info, ctx, path="gone.png")
    (tmp_path / "bomb.png").write_bytes(_png_header(100_000, 100_000))
    with pytest.raises(ToolError, match=r"refused: .*decompression bomb"):
        await call(image_info, ctx, path="bomb.png")


# -- pdf_text ------------------------------------------------------------------------------------


def make_pdf(pages: list[str], title: str = "Test Document") -> bytes:
    """A minimal valid PDF: one Helvetica text line per page, and an Info dictionary."""
    objects: list[bytes] = []
    n = len(pages)
    kids = " ".join(f"{3 + 2 * i} 0 R" for i in range(n))
    objects.append(b"<< /Type /Catalog /Pages 2 0 R >>")
    objects.append(f"<< /Type /Pages /Kids [{kids}] /Count {n} >>".encode())
    font = 3 + 2 * n
    for i, text in enumerate(pages):
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents "
                       f"{4 + 2 * i} 0 R /Resources << /Font << /F1 {font} 0 R >> >> >>"
                       .encode())
        stream = f"BT /F1 18 Tf 72 700 Td ({text}) Tj ET".encode()
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream))
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    objects.append(f"<< /Title ({title}) /Author (Ada Lovelace) >>".encode())
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += (b"trailer\n<< /Size %d /Root 1 0 R /Info %d 0 R >>\nstartxref\n%d\n%%%%EOF\n"
            % (len(objects) + 1, len(objects), xref))
    return bytes(out)


async def test_pdf_text_pages_and_metadata(tmp_path: Path) -> None:
    (tmp_path / "doc.pdf").write_bytes(make_pdf([f"Hello from page {i}" for i in (1, 2, 3)]))
    assert len(PdfReader(tmp_path / "doc.pdf").pages) == 3  # a real PDF, by pypdf's reading
    ctx = context(tmp_path)
    out = await call(pdf_text, ctx, path="doc.pdf")
    assert out["page_count"] == 3 and out["truncated"] is False
    assert [p["text"] for p in out["pages"]] == [f"Hello from page {i}" for i in (1, 2, 3)]
    assert out["metadata"] == {"Title": "Test Document", "Author": "Ada Lovelace"}
    some = await call(pdf_text, ctx, path="doc.pdf", pages="3,1-2")
    assert [p["page"] for p in some["pages"]] == [3, 1, 2]
    capped = await call(pdf_text, ctx, path="doc.pdf", max_pages=2)
    assert len(capped["pages"]) == 2 and capped["truncated"] is True


async def test_pdf_text_encrypted_needs_its_password(tmp_path: Path) -> None:
    writer = PdfWriter(clone_from=io.BytesIO(make_pdf(["Secret plans"])))
    writer.encrypt("s3cret", algorithm="RC4-128")
    writer.write(tmp_path / "locked.pdf")
    ctx = context(tmp_path)
    with pytest.raises(ToolError, match=r"'locked.pdf' is encrypted: give its 'password'"):
        await call(pdf_text, ctx, path="locked.pdf")
    out = await call(pdf_text, ctx, path="locked.pdf", password="s3cret")
    assert out["encrypted"] is True and out["pages"][0]["text"] == "Secret plans"


async def test_pdf_text_bad_inputs(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    (tmp_path / "fake.pdf").write_text("%PDF-1.4 but then nothing useful")
    with pytest.raises(ToolError, match=r"'fake.pdf' is not a readable PDF"):
        await call(pdf_text, ctx, path="fake.pdf")
    (tmp_path / "doc.pdf").write_bytes(make_pdf(["one"]))
    with pytest.raises(ToolError, match="page range '2-4' is outside 1-1"):
        await call(pdf_text, ctx, path="doc.pdf", pages="2-4")
    with pytest.raises(ToolError, match="cannot read page range 'first'"):
        await call(pdf_text, ctx, path="doc.pdf", pages="first")
    with pytest.raises(SandboxViolation, match=ESCAPE):
        await call(pdf_text, ctx, path="../doc.pdf")


def test_page_numbers() -> None:
    assert page_numbers("1-3,5,9-", 10) == [1, 2, 3, 5, 9, 10]
    assert page_numbers(None, 4) == [1, 2, 3, 4]
    assert page_numbers("2,2,1-2", 5) == [2, 1]
