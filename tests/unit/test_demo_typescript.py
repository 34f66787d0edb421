"""The demo's prerequisite for its TypeScript SDK vendor: Node.js, and the SDK built."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from residuals.demo import typescript


def test_without_node_the_demo_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(typescript.shutil, "which", lambda name: None)
    with pytest.raises(typescript.TypeScriptSdkMissing, match=r"install Node\.js 20\.10"):
        typescript.ensure_built(lambda _: None)


def test_a_source_newer_than_the_build_makes_it_stale(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    source = tmp_path / "src" / "client.ts"
    source.write_text("export {};\n")
    (tmp_path / "package-lock.json").write_text("{}\n")
    (tmp_path / "tsconfig.json").write_text("{}\n")
    assert typescript._stale(tmp_path)  # never built
    built = tmp_path / "dist" / "src" / "index.js"
    built.parent.mkdir(parents=True)
    built.write_text("export {};\n")
    for path in (source, tmp_path / "package-lock.json", tmp_path / "tsconfig.json"):
        os.utime(path, (1_000_000, 1_000_000))
    assert not typescript._stale(tmp_path)
    os.utime(source, None)  # edited after the build
    assert typescript._stale(tmp_path)


def test_the_vendor_program_is_in_the_sdk() -> None:
    assert typescript.vendor_program().is_file()
    assert typescript.vendor_program().parent.parent == typescript.sdk_dir()
