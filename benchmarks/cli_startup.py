"""How fast ``lightning-info --help`` answers, next to the cost of importing torch and Lightning.

Issue 22 item 5: ``--help`` took 7-8 s because torch and Lightning were imported first. The
command line now imports them only inside the subcommands, so ``--help`` costs a Python start
plus argparse. Each command runs in a fresh subprocess (``--repeats`` times, after one untimed
warm-up run that fills the OS file cache); the median and the range of the wall times are printed.

    python benchmarks/cli_startup.py [--repeats 7] [--repo PATH]

``--repo`` times the command line of another checkout (e.g. an older commit unpacked with
``git archive``), for a before/after comparison on the same machine.

The machine may be shared: the load average is printed with the table; compare rows of the same
run only. Not a test (no timed asserts); `tests/test_cli.py::test_cli_import_and_help_import_no_torch`
checks the property behind the numbers (no torch in ``sys.modules`` after ``--help``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

COMMANDS: dict[str, list[str]] = {
    "lightning-info --help": [sys.executable, "-m", "lightning_info.cli", "--help"],
    "lightning-info score --help": [sys.executable, "-m", "lightning_info.cli", "score", "--help"],
    "lightning-info demo --help": [sys.executable, "-m", "lightning_info.cli", "demo", "--help"],
    "python -c 'pass' (interpreter start)": [sys.executable, "-c", "pass"],
    "python -c 'import torch, pytorch_lightning'": [
        sys.executable, "-c", "import torch, pytorch_lightning",
    ],
}  # fmt: skip


def _time(cmd: list[str], repeats: int, env: dict[str, str]) -> list[float]:
    # an empty working directory: `python -m` puts it first on sys.path, so running from a
    # checkout would time that checkout's package instead of the one on PYTHONPATH
    with tempfile.TemporaryDirectory() as cwd:
        subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, check=True)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, check=True)
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--repo", type=Path, default=REPO, help="checkout whose CLI is timed")
    args = parser.parse_args()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(args.repo), env.get("PYTHONPATH")]))
    load = os.getloadavg()[0]
    rows = []
    for name, cmd in COMMANDS.items():
        times = _time(cmd, args.repeats, env)
        rows.append((name, statistics.median(times), min(times), max(times)))
    print(
        f"{args.repo}: python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{args.repeats} runs each, "
        f"load average {load:.1f} -> {os.getloadavg()[0]:.1f}"
    )
    print("| command | median s | min s | max s |")
    print("|---|---|---|---|")
    for name, med, lo, hi in rows:
        print(f"| `{name}` | {med:.2f} | {lo:.2f} | {hi:.2f} |")


if __name__ == "__main__":
    main()
