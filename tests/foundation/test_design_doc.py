"""docs/design.md is the contract the code cites: every "design.md §N" names a heading of it,
the README links it, and nothing cites a contract file outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DESIGN = REPO_ROOT / "docs" / "design.md"
# "design.md §4.2", "design.md §6/§9", "design.md §2, §5.3": every number after the file name.
CITATION = re.compile(r"design\.md((?:[ ,/]*(?:and )?§\d+(?:\.\d+)?)+)")
SECTION = re.compile(r"§(\d+(?:\.\d+)?)")
HEADING = re.compile(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", re.MULTILINE)
OUTSIDE_CONTRACT = re.compile(r"SPEC(\.md| section| §)|\bthe seed\b")


def tracked_text_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    suffixes = {".py", ".html", ".md", ".yml", ".yaml", ".json", ".toml", ".sh", ".txt", ".cfg"}
    return [
        REPO_ROOT / name for name in listed if Path(name).suffix in suffixes and (REPO_ROOT / name).exists()
    ]


def test_every_design_citation_names_an_existing_section() -> None:
    sections = set(HEADING.findall(DESIGN.read_text()))
    assert {"2", "4.2", "5.5", "10.1"} <= sections  # the headings the code leans on exist at all
    cited: dict[str, list[str]] = {}
    for path in tracked_text_files():
        for match in CITATION.finditer(path.read_text(errors="replace")):
            for number in SECTION.findall(match.group(1)):
                cited.setdefault(number, []).append(str(path.relative_to(REPO_ROOT)))
    assert cited, "no file cites docs/design.md"
    missing = {number: places for number, places in cited.items() if number not in sections}
    assert not missing, f"citations of sections docs/design.md does not have: {missing}"


def test_readme_links_the_design_document() -> None:
    assert "(docs/design.md)" in (REPO_ROOT / "README.md").read_text()


def test_nothing_cites_a_contract_outside_the_repository() -> None:
    offenders = [
        f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}"
        for path in tracked_text_files()
        if path.name != Path(__file__).name
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE_CONTRACT.search(line)
    ]
    assert not offenders, "\n".join(offenders)
