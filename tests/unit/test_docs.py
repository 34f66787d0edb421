"""The README is the newcomer's contract: keep its commands and settings true."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from residuals.platform.config import KafkaSettings, PostgresSettings, TelemetrySettings, describe
from residuals.platform.grpc_server import GrpcSettings
from residuals.stack.settings import StackSettings

ROOT = Path(__file__).parents[2]
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize(
    "settings", [KafkaSettings, PostgresSettings, TelemetrySettings, GrpcSettings, StackSettings]
)
def test_every_setting_is_documented(settings: type) -> None:
    missing = [var for var, _, _ in describe(settings) if f"`{var}`" not in README]
    assert missing == [], f"README configuration table lacks {missing}"


def test_the_two_commands_exist() -> None:
    assert "./run demo" in README and "./run test" in README
    run = (ROOT / "run").read_text()
    assert "demo) cmd_demo" in run and "test) cmd_test" in run
    assert (ROOT / ".ci" / "run").read_text().count("./run test") == 1


# --- the project's own documents (docs/) ----------------------------------------------------

RULES = ROOT / "docs/ROYALTY-RULES.md"
DOCS = ("docs/ROYALTY-RULES.md", "docs/ARCHITECTURE.md", "docs/OPERATIONS.md")

#: A reference to a Markdown document: a path with a folder (``docs/ARCHITECTURE.md``,
#: ``helm/residuals/README.md``) or a bare upper-case name (``README.md``). Lower-case bare
#: names are left alone: ``env.md(...)`` in a test is a Python attribute, not a document.
_MD_REFERENCE = re.compile(
    r"(?<![\w./-])((?:[\w.-]+/)+[\w.-]*[\w-]\.md|[A-Z][A-Z0-9_-]*\.md)(?![\w-])"
)
#: A rules section cited in code or docs: §5, §5a, or a range §4-7. RFC sections (§2.1)
#: are not the rules'.
_SECTION = re.compile(r"§(\d+)([a-z]?)(?:-§?(\d+))?(?![\d.]*\d)")
_HEADING = re.compile(r"^## (\d+[a-z]?)\. ", re.MULTILINE)


def _tracked_files() -> list[Path]:
    """The repository's files: git's list when this is a checkout, else the tree."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "-z"],
            capture_output=True,
            check=True,
        ).stdout.decode()
        paths = [ROOT / name for name in listed.split("\0") if name]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", ".stack", "node_modules", "__pycache__"}
        paths = [
            p for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.relative_to(ROOT).parts)
        ]
    return [p for p in paths if p.is_file() and not p.is_symlink()]


def _text(path: Path) -> str | None:
    data = path.read_bytes()
    if b"\0" in data[:8192]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _texts() -> dict[str, str]:
    texts = {}
    for path in _tracked_files():
        text = _text(path)
        if text is not None:
            texts[path.relative_to(ROOT).as_posix()] = text
    return texts


def _resolves(reference: str, source: str) -> bool:
    """The document exists relative to the repository root or to the citing file."""
    return any((base / reference).is_file() for base in (ROOT, (ROOT / source).parent))


def test_every_markdown_reference_names_a_document_in_the_repository() -> None:
    """Nothing may point at a document a clone does not have (the rules and architecture
    live in docs/, not next to the repository)."""
    missing = sorted(
        f"{source}:{text.count(chr(10), 0, match.start()) + 1}: {match.group(1)}"
        for source, text in _texts().items()
        for match in _MD_REFERENCE.finditer(text)
        if not _resolves(match.group(1), source)
    )
    assert missing == [], "references to documents that do not exist:\n" + "\n".join(missing)


def test_the_reference_check_sees_a_bare_document_name() -> None:
    bare = "ROYALTY-RULES" + ".md"  # spelled apart: this file is checked too
    absent = "docs/NO-SUCH" + ".md"
    refs = [m.group(1) for m in _MD_REFERENCE.finditer(f"see {bare} §5 and `{absent}`")]
    assert refs == [bare, absent]
    assert not _resolves(bare, "services/residuals/domain/scope.py")
    assert not _resolves(absent, "README.md")
    assert _resolves("docs/ROYALTY-RULES.md", "services/residuals/domain/scope.py")
    assert [m.group(1) for m in _MD_REFERENCE.finditer("env.md('finance')")] == []


def _cited_sections(text: str) -> set[str]:
    cited: set[str] = set()
    for line in text.splitlines():
        if "RFC" in line:
            continue
        for match in _SECTION.finditer(line):
            first, letter, last = match.groups()
            if last is None:
                cited.add(first + letter)
            else:
                cited.update(str(n) for n in range(int(first), int(last) + 1))
    return cited


def test_the_rules_have_every_section_the_code_cites() -> None:
    sections = set(_HEADING.findall(RULES.read_text()))
    assert {str(n) for n in range(1, 11)} | {"5a"} <= sections
    cited = {
        (section, source)
        for source, text in _texts().items()
        if source != "docs/ROYALTY-RULES.md"
        for section in _cited_sections(text)
    }
    missing = sorted(
        f"§{section} ({source})" for section, source in cited if section not in sections
    )
    assert missing == [], f"docs/ROYALTY-RULES.md has no section for {missing}"
    assert {section for section, _ in cited} >= {"2", "3", "5", "8", "10"}


def test_section_citations_are_read_as_the_rules_write_them() -> None:
    assert _cited_sections("(§4-7) §5a, §10 and §2\nRFC 9162 §2.1") == {
        "4",
        "5",
        "6",
        "7",
        "5a",
        "10",
        "2",
    }
    assert _cited_sections("Hashes (§2.1.1)") == set()


def test_the_readme_points_to_the_docs() -> None:
    for path in DOCS:
        assert (ROOT / path).is_file()
        assert f"({path})" in README
