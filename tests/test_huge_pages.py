"""The entry points restart themselves once with glibc's huge-page tunable (Linux, THP on)."""

import os
import subprocess
import sys

import pytest

from ssl_vqvae import huge_pages

SCRIPT = (
    "import os, sys\n"
    "from ssl_vqvae import huge_pages\n"
    "print('start', flush=True)\n"
    "huge_pages.restart_with_huge_pages()\n"
    "print(os.environ['GLIBC_TUNABLES'], sys.argv[1:])\n"
)


def test_wanted_only_when_nobody_chose():
    assert not huge_pages.wanted({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"})
    assert not huge_pages.wanted(
        {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}
    )
    if sys.platform.startswith("linux") and huge_pages.THP_SETTING.is_file():
        thp_on = "[never]" not in huge_pages.THP_SETTING.read_text()
        assert huge_pages.wanted({}) == thp_on
        assert huge_pages.wanted({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}) == thp_on


def test_restart_keeps_arguments_and_other_tunables(tmp_path):
    if not huge_pages.wanted({}):
        pytest.skip("no transparent huge pages on this machine")
    script = tmp_path / "entry.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    env["GLIBC_TUNABLES"] = "glibc.malloc.arena_max=4"
    result = subprocess.run(
        [sys.executable, str(script), "--flag=1", "x y"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    # Printed once before the restart, then the restarted program runs to the end, once.
    assert result.stdout.splitlines() == [
        "start",
        "start",
        "glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1 ['--flag=1', 'x y']",
    ]
