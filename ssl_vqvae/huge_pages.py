"""Transparent huge pages for XLA:CPU's large buffers (Linux, glibc).

Every step allocates its large temporaries afresh (the 34.6 M-parameter projector's gradients
alone are 138 MB). glibc serves such blocks with `mmap` and unmaps them on free, so the next
step touches fresh 4 KiB pages again: the Barlow Twins stage-1 step took ~225,000 minor page
faults per step on this project's 2-core CPU. With glibc's `glibc.malloc.hugetlb=1` tunable,
those mappings are advised to use transparent huge pages (2 MiB): ~7,000 faults per step, and
the step 15-30 % faster there. glibc reads tunables only at start-up, so the program starts
itself again with the tunable set, before anything is computed.

Set `GLIBC_TUNABLES` yourself to choose (e.g. `glibc.malloc.hugetlb=0` keeps 4 KiB pages);
nothing happens where the kernel's huge pages are off or unknown.
"""

from __future__ import annotations

import os
import pathlib
import sys

TUNABLE = "glibc.malloc.hugetlb"
THP_SETTING = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")


def wanted(environ: dict[str, str] | os._Environ = os.environ) -> bool:
    """Whether to restart with the tunable: Linux with THP available, tunable not chosen yet."""
    if not sys.platform.startswith("linux") or TUNABLE in environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        setting = THP_SETTING.read_text()
    except OSError:
        return False
    return "[never]" not in setting


def restart_with_huge_pages() -> None:
    """Re-executes this program (same interpreter, same arguments) with the tunable set, when
    `wanted`; returns without doing anything otherwise."""
    if not wanted():
        return
    tunables = [os.environ.get("GLIBC_TUNABLES", ""), f"{TUNABLE}=1"]
    os.environ["GLIBC_TUNABLES"] = ":".join(t for t in tunables if t)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])
