"""The package's layers, read from its import statements (not from a list kept by hand).

- Models and math import no trainer and no I/O layer.
- Inference, loading and evaluation (`api`, `generate`, `decoding`, `inference`, `artifacts`,
  `evaluate`, `evaluation/`) never import the stage trainers.
- No module is over 300 lines.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).parent.parent / "ssl_vqvae"
MAX_LINES = 300
TRAINERS = {
    "ssl_vqvae.stage1",
    "ssl_vqvae.stage1_eval",
    "ssl_vqvae.stage2",
    "ssl_vqvae.stage2_eval",
    "ssl_vqvae.stage_run",
}
LOOP = {"ssl_vqvae.training", "ssl_vqvae.train_state", "ssl_vqvae.checkpoints"}
MODELS_AND_MATH = (
    "augment",
    "augment_time",
    "augment_values",
    "categorical",
    "depthwise",
    "branch",
    "branch_prior",
    "prior_blocks",
    "initializers",
    "layers",
    "normalization",
    "projected_quantizer",
    "release_codec",
    "prior_objective",
    "quantizer",
    "sampling",
    "ssl",
    "stft",
    "transformer",
    "two_branch",
    "two_branch_objective",
    "vqvae",
    "weight_norm",
    "evaluation.fcn",
    "evaluation.probes",
    "evaluation.scores",
)
CONSUMERS = ("api", "generate", "decoding", "inference", "artifacts", "evaluate", "evaluation")


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: pathlib.Path) -> set[str]:
    """Every `ssl_vqvae` module a file imports, at any depth (`from a import b` -> a.b if a
    module b exists, else a)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                is_module = (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py")
                names.add(candidate if is_module.is_file() else node.module)
    return {name for name in names if name.split(".")[0] == "ssl_vqvae"}


GRAPH = {_module_name(path): _imports(path) for path in sorted(PACKAGE.rglob("*.py"))}


def _in(module: str, prefixes: tuple[str, ...]) -> bool:
    short = module.removeprefix("ssl_vqvae.")
    return any(short == p or short.startswith(p + ".") for p in prefixes)


def test_the_graph_is_read_from_the_sources():
    # A parser that found nothing would pass every rule below.
    assert "ssl_vqvae.stage_run" in GRAPH["ssl_vqvae.stage2"]
    assert "ssl_vqvae.artifacts" in GRAPH["ssl_vqvae.api"]
    assert "ssl_vqvae.evaluation.fcn" in GRAPH["ssl_vqvae.evaluation.classifier"]
    assert len(GRAPH) > 40


@pytest.mark.parametrize("module", [m for m in GRAPH if _in(m, MODELS_AND_MATH)])
def test_models_and_math_import_no_trainer(module):
    forbidden = GRAPH[module] & (TRAINERS | LOOP | {"ssl_vqvae.api", "ssl_vqvae.layout"})
    assert not forbidden, f"{module} imports {sorted(forbidden)}"


@pytest.mark.parametrize("module", [m for m in GRAPH if _in(m, CONSUMERS)])
def test_inference_and_evaluation_never_import_the_stage_trainers(module):
    forbidden = GRAPH[module] & TRAINERS
    assert not forbidden, f"{module} imports {sorted(forbidden)}"


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: p.name)
def test_no_module_is_over_300_lines(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES
