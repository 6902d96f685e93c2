"""`python -m benchmarks`: the whole benchmark suite (see benchmarks/README.md and suite.py)."""

import pathlib
import sys

# The modules of this folder import each other as top-level modules, as they do when run as
# scripts (`python benchmarks/suite.py`).
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import suite  # noqa: E402

from ssl_vqvae import huge_pages  # noqa: E402

huge_pages.restart_with_huge_pages()
suite.main()
