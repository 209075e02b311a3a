"""The README's Python blocks run as written (in a temporary directory)."""

import os
import re
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the `test` extra installs tomli there
    import tomli as tomllib

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_the_two_commands():
    text = README.read_text()
    assert "make demo" in text
    assert "make test" in text


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_block_runs(index, tmp_path, capsys):
    block = _python_blocks()[index]
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(block, f"README.md block {index}", "exec"), {"__name__": "__readme__"})
    finally:
        os.chdir(cwd)
    out = capsys.readouterr().out
    assert out.strip(), "every README block prints its result"
    if "SmoothUniqueInformation" in block:
        assert (tmp_path / "lightning_logs").exists()
        assert list(tmp_path.rglob("sui_scores.csv"))


# Issue 22 items 2, 6 and 9: the install section, the demo table's digits, the project URLs.

PYPROJECT = README.parent / "pyproject.toml"


def _section(title: str) -> str:
    text = README.read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", text, flags=re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def test_pyproject_has_project_urls():
    urls = tomllib.loads(PYPROJECT.read_text())["project"]["urls"]
    assert {"Documentation", "Source", "Issues"} <= set(urls)
    assert all(url.startswith("https://") for url in urls.values())
    assert urls["Issues"].startswith(urls["Source"])


def test_readme_install_section_names_every_extra_and_the_cpu_index():
    section = _section("Install")
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    for extra in project["optional-dependencies"]:
        assert f"`{extra}`" in section, f"extra {extra!r} is not explained"
    assert "--index-url https://download.pytorch.org/whl/cpu" in section  # CPU-only machines
    assert "CUDA" in section  # and what GPU machines get by default
    assert f"git+{project['urls']['Source']}" in section  # the same address as pyproject
    assert re.search(r"pip install .*\[examples\]", section)
    assert "lightning-info demo" in section


def _demo_table_rows() -> list[list[str]]:
    text = README.read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("| run | epochs |")]
    assert len(lines) == 1, "one demo table in the README"
    start = text.splitlines().index(lines[0])
    rows = []
    for line in text.splitlines()[start:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    return rows


def test_readme_demo_table_has_the_demos_columns_and_digits():
    from lightning_info.demo import DECIMALS, HEADER, TOLERANCE

    rows = _demo_table_rows()
    assert rows[0] == HEADER
    assert len(rows) == 2 + 3  # header, separator, the three runs
    value = re.compile(rf"^(\d+\.\d{{{DECIMALS}}}|-)$")
    for row in rows[2:]:
        for cell in row[4:]:  # accuracy, DSMI and AUROC columns
            assert value.match(cell), f"{cell!r} in {row}"
    assert TOLERANCE in README.read_text()  # the tolerance stated next to the table
