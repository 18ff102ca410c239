"""The manual: docs/ builds as a site with no warning (links and anchors checked), every page is in
the nav, the README stays a short front door whose links land, and every setting is documented."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from markdown.extensions.toc import slugify

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README_MAX_LINES = 200


def build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    """`mkdocs build --strict` of `config` into `site` (material's notice about MkDocs 2 silenced)."""
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    args = ["build", "--strict", "-f", str(config), "--site-dir", str(site)]
    command = [sys.executable, "-m", "mkdocs", *args]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def nav_pages(nav: list) -> list[str]:
    pages = []
    for entry in nav:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += nav_pages(value) if isinstance(value, list) else [value]
    return pages


def anchors(page: Path) -> set[str]:
    """The ids of `page`'s headings as mkdocs (Python-Markdown's toc) makes them, code marks dropped."""
    text = re.sub(r"(?ms)^```.*?^```", "", page.read_text())
    return {slugify(h.replace("`", ""), "-") for h in re.findall(r"(?m)^#{1,6} (.+?)\s*$", text)}


def test_the_site_builds_without_a_warning(tmp_path):
    result = build(ROOT / "mkdocs.yml", tmp_path / "site")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "WARNING" not in output, output
    assert (tmp_path / "site" / "api" / "index.html").is_file()


def test_a_broken_link_an_unknown_anchor_or_a_page_left_out_fails_the_build(tmp_path):
    """The same config on three small pages: each kind of rot the build must refuse."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\n[gone](gone.md) and [here](other.md#no-such-heading)\n")
    (docs / "other.md").write_text("# Other\n\n## A heading\n")
    (docs / "stray.md").write_text("# Not in the nav\n")
    broken = {**config(), "docs_dir": str(docs), "nav": [{"Home": "index.md"}, {"Other": "other.md"}]}
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(broken))
    result = build(tmp_path / "mkdocs.yml", tmp_path / "site")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "'gone.md'" in output and "'#no-such-heading'" in output and "stray.md" in output, output


def test_every_page_is_in_the_nav_and_every_nav_entry_is_a_page():
    pages = nav_pages(config()["nav"])
    assert len(pages) == len(set(pages))
    assert set(pages) == {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}


def test_the_readme_is_a_short_front_door():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= README_MAX_LINES
    for page in nav_pages(config()["nav"]):  # it links every page of the manual
        assert f"(docs/{page}" in readme, page


def test_the_readmes_links_into_docs_land():
    links = re.findall(r"\]\((docs/[^)#\s]+)(?:#([^)\s]+))?\)", (ROOT / "README.md").read_text())
    assert len(links) > 10
    for path, anchor in links:
        target = ROOT / path
        assert target.is_file(), path
        if anchor:
            assert anchor in anchors(target), f"{path}#{anchor}"


def test_the_two_setup_commands_are_make_targets_and_ci_runs_the_tests():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"(?ms)^```bash\n(.*?)^```", readme)
    assert blocks[0].startswith("make test ") and blocks[1].startswith("make serve ")
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"(?m)^test: ", makefile) and re.search(r"(?m)^serve: ", makefile)
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith("make test")
    assert "mkdocs build --strict --site-dir site" in makefile


def test_every_setting_is_documented():
    from service.settings import Settings

    page = (DOCS / "configuration.md").read_text()
    documented = set(re.findall(r"`(YOLOR_[A-Z0-9_]+)`", page))
    settings = {f"YOLOR_{name.upper()}" for name in Settings.model_fields}
    assert settings - documented == set()
