"""The README's Python blocks run as written (in a temporary directory)."""

import os
import re
from pathlib import Path

import pytest

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
