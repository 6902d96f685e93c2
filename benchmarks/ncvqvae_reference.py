"""The original NC-VQVAE PyTorch code against this library, in one process, alternating blocks.

    python -m benchmarks.ncvqvae_reference --ref_repo=PATH [--rows=stage1_*,...] [--steps=N]
        [--repeats=5] [--torch_threads=N] [--json=benchmarks/results/ncvqvae_reference.json]

PATH is an extracted checkout of github.com/erlendlokna/Generative-SSL-VQVAE-modelling; its
modules are imported from there, unchanged. Its experiments are Lightning modules: stand-ins for
pytorch_lightning and wandb (always) and umap, seaborn, pandas, supervised_FCN (where missing)
sit in `sys.modules` while it is imported, and its experiments' `plt` and its sampler's progress
bar are made inert: logging and plotting cost nothing on its side, as on ours.

Per row the reference side runs what one optimisation step of its trainer does (its
`training_step` with its config.yaml values, then zero_grad, backward and the step of the AdamW
that its `configure_optimizers` returns), or its `conditional_sample` of 128 series (T = 10,
two prior passes per step, decoding included). Our side is exactly the jitted call that
`python -m benchmarks` times for the row of the same name (`stage1.case`, `stage2.case`,
`sampling.case`). Both get the same GunPoint batches, augmented views made beforehand (not
timed). Timing is `peers.compare`: warm-up, then `--repeats` rounds of one block of `--steps`
calls per side, reference first, so a change of machine load falls on both sides.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.util
import io
import itertools
import pathlib
import sys
import tempfile
import types
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ssl_vqvae import augment, compilation_cache, config_lib, data, huge_pages, sharding

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402
import peers  # noqa: E402
import sampling  # noqa: E402
import stage1  # noqa: E402
import stage2  # noqa: E402

try:
    import torch
    import yaml
except ImportError as error:  # the `peers` extra is optional
    torch = None
    MISSING = f"benchmarks.ncvqvae_reference: skipped, needs torch: make peers ({error})"

DEFAULT_JSON = pathlib.Path(__file__).resolve().parent / "results" / "ncvqvae_reference.json"
ROWS = {  # row (as in `python -m benchmarks`) -> (kind, stage-1 ssl method, series per call)
    "stage1_none": ("stage1", "none", stage1.BATCH_SIZE),
    "stage1_barlowtwins": ("stage1", "barlowtwins", stage1.BATCH_SIZE),
    "stage1_vibcreg": ("stage1", "vibcreg", stage1.BATCH_SIZE),
    "stage2_token_index": ("stage2", "none", stage2.BATCH_SIZE),
    "stage2_full_embedding": ("stage2", "vibcreg", stage2.BATCH_SIZE),
    "sampling_128_cfg": ("sampling", sampling.METHOD, 128),
}
DEFAULT_STEPS = {"stage1": 5, "stage2": 5, "sampling": 1}
EXPERIMENTS = tuple(
    f"experiments.exp_{n}" for n in ("vqvae", "siam_vqvae", "maskgit", "full_embed_maskgit")
)
REFERENCE_MODULES = ("utils", *EXPERIMENTS, "models.stage2.sample")
ALWAYS_STANDING_IN = ("pytorch_lightning", "wandb")  # real ones would want a Trainer / a login
STANDING_IN_WHERE_MISSING = ("umap", "umap.plot", "seaborn", "pandas", "supervised_FCN") + tuple(
    f"supervised_FCN.example_{n}" for n in ("pretrained_model_loading", "compute_FID", "compute_IS")
)


class Anything:
    """Absorbs any use (call, attribute, item, unpacking into two): a logging or plotting call
    of the reference that must do nothing."""

    __getattr__ = __call__ = __getitem__ = lambda self, *args, **kwargs: self
    __iter__ = lambda self: iter((self, self))  # noqa: E731


class StandInModule(types.ModuleType):
    """A module whose every public attribute is an `Anything`."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return Anything()


def lightning_stand_in() -> StandInModule:
    """`pytorch_lightning` with what the experiments' steps use of `LightningModule`."""

    class LightningModule(torch.nn.Module):
        current_epoch = 0

        def log(self, *args: Any, **kwargs: Any) -> None:
            del args, kwargs

        log_dict = log

        def lr_schedulers(self) -> Any:  # the scheduler of configure_optimizers()
            return self.__dict__["scheduler"]

    module = StandInModule("pytorch_lightning")
    module.LightningModule = LightningModule
    return module


@contextlib.contextmanager
def stand_ins() -> Iterator[None]:
    """Stand-ins in `sys.modules` while the reference is imported; the previous entries after."""
    names = [*ALWAYS_STANDING_IN] + [
        n for n in STANDING_IN_WHERE_MISSING if importlib.util.find_spec(n.split(".")[0]) is None
    ]
    saved = {name: sys.modules.get(name) for name in names}
    sys.modules.update({name: StandInModule(name) for name in names})
    sys.modules["pytorch_lightning"] = lightning_stand_in()
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def import_reference(ref_repo: pathlib.Path) -> dict[str, types.ModuleType]:
    """The reference's modules that the rows use, imported from `ref_repo`, by name."""
    if not (ref_repo / "experiments" / "exp_siam_vqvae.py").is_file():
        raise SystemExit(f"--ref_repo={ref_repo}: not an NC-VQVAE checkout")
    sys.path.insert(0, str(ref_repo))
    try:
        with stand_ins(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.cuda.amp.autocast
            modules = {name: importlib.import_module(name) for name in REFERENCE_MODULES}
    finally:
        sys.path.remove(str(ref_repo))
    for name in EXPERIMENTS:
        modules[name].plt = Anything()  # its steps plot for wandb now and then
    sampler = modules["models.stage2.sample"]
    sampler.tqdm = functools.partial(sampler.tqdm, disable=True)
    return modules


def reference_config(ref_repo: pathlib.Path, method: str, ds: data.UCRDataset) -> dict:
    """Its configs/config.yaml, for `ds` and the stage-1 ssl method (none = "")."""
    config = yaml.safe_load((ref_repo / "configs" / "config.yaml").read_text())
    config["dataset"]["dataset_name"] = ds.name
    config["SSL"]["stage1_method"] = "" if method == "none" else method
    return config


def reference_experiment(
    ref: dict, ref_repo: pathlib.Path, kind: str, method: str, ds: data.UCRDataset, x: Any
) -> Any:
    """The reference's experiment of the row. Stage 2 loads a stage-1 tokenizer that ran one
    training forward on `x` (token counts, decoder size, BatchNorm and codebook statistics),
    saved where its loader looks when `saved_models/` lacks the file (the temp folder)."""
    config = reference_config(ref_repo, method, ds)
    length, n_train = ds.length, len(ds.train)
    if kind == "stage1" and method != "none":
        return ref["experiments.exp_siam_vqvae"].Exp_SIAM_VQVAE(length, config, n_train)
    plain = reference_config(ref_repo, "none", ds)
    tokenizer = ref["experiments.exp_vqvae"].Exp_VQVAE(length, plain, n_train)
    if kind == "stage1":
        return tokenizer
    with torch.no_grad():
        tokenizer((x, None))
    with tempfile.TemporaryDirectory(prefix="ncvqvae-ref-") as folder:
        for part in ("encoder", "decoder", "vq_model"):
            name = ref["utils"].model_filename(config, part.replace("_", ""))
            torch.save(getattr(tokenizer, part).state_dict(), f"{folder}/{name}-{ds.name}.ckpt")
        previous, tempfile.tempdir = tempfile.tempdir, folder
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # it prints every path it loads
                if method == "none":
                    experiments = ref["experiments.exp_maskgit"]
                    return experiments.ExpMaskGIT(length, config, n_train, ds.num_classes)
                experiments = ref["experiments.exp_full_embed_maskgit"]
                return experiments.ExpFullEmbedMaskGIT(  # as its runner, experiments1.py
                    length, config, n_train, ds.num_classes, "cpu", finetune_codebook=True
                )
        finally:
            tempfile.tempdir = previous


def reference_side(
    ref: dict, ref_repo: pathlib.Path, row: str, ds: data.UCRDataset, batches: list[dict]
) -> peers.Side:
    """One step of the reference's trainer for the row, or one `conditional_sample` call."""
    kind, method, batch = ROWS[row]
    torch.manual_seed(0)
    np.random.seed(0)  # its masks and plot decisions draw from numpy's global generator

    def tensors(key: str) -> list[Any]:
        return [torch.from_numpy(b[key].transpose(0, 2, 1).copy()) for b in batches]

    xs = tensors("x")
    ys = [torch.from_numpy(b["y"].astype(np.int64))[:, None] for b in batches]
    views = zip(xs, tensors("x_aug"), strict=True) if "x_aug" in batches[0] else xs
    inputs = itertools.cycle(list(zip(views, ys, strict=True)))
    experiment = reference_experiment(ref, ref_repo, kind, method, ds, xs[0])
    model = experiment if kind == "stage1" else experiment.maskgit
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    last: dict[str, Any] = {}
    if kind == "sampling":
        model.eval()  # as its evaluation samples
        classes = itertools.cycle(range(ds.num_classes))
        sample = ref["models.stage2.sample"].conditional_sample

        def call() -> Any:  # its default guidance scale 1, as ours; two passes all the same
            last["out"] = sample(model, batch, "cpu", next(classes))
            return last["out"]

    else:
        configured = experiment.configure_optimizers()
        optimizer = configured["optimizer"]
        experiment.__dict__["scheduler"] = configured["lr_scheduler"]  # for lr_schedulers()
        # Its training_step steps the scheduler before the first optimizer step: torch warns.
        warnings.filterwarnings("ignore", message="Detected call of")

        def call() -> Any:  # batch_idx 1: its 5 % chance of sampling at batch 0 left out
            loss = experiment.training_step(next(inputs), 1)["loss"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            last["out"] = loss.detach()
            return last["out"]

    def check() -> None:
        if not bool(torch.isfinite(last["out"]).all()):
            raise FloatingPointError(f"reference {row}: non-finite output")

    return peers.Side(call, lambda out: None, params, check)


def host_batches(kind: str, method: str, ds: data.UCRDataset) -> list[dict]:
    """The host batches that `stage1.case` / `stage2.case` draw (`project_case` checks it);
    the sampling row uses them only for its tokenizer's one training forward."""
    if kind != "stage1":
        seed = config_lib.load_config_file("stage2_maskgit").seed
        return common.sample_batches(ds.train, stage2.BATCH_SIZE, seed)[0]
    config = config_lib.load_config_file(config_lib.STAGE1_CONFIGS[method])
    views = () if method == "none" else augment.resolve_augmentations(config.ssl.augmentations)
    return common.sample_batches(ds.train, stage1.BATCH_SIZE, config.seed, views)[0]


def project_case(row: str, context: common.Context, batches: list[dict]) -> common.Case:
    """The suite's case of the row (benchmarks/suite.py)."""
    kind, method, batch = ROWS[row]
    if kind == "sampling":
        return sampling.case(context, batch, two_passes=True)
    case = (stage1 if kind == "stage1" else stage2).case(context, method)
    if not np.array_equal(np.asarray(case.args[1]["x"]), batches[0]["x"]):
        raise AssertionError(f"{row}: the reference would see other batches than the project")
    return case


def run_row(name: str, ref: dict, args: argparse.Namespace, context: common.Context) -> dict:
    """Builds both sides of row `name` and compares them (`peers.compare`)."""
    kind, method, batch = ROWS[name]
    batches = host_batches(kind, method, context.dataset)
    reference = reference_side(ref, args.ref_repo, name, context.dataset, batches)
    project = peers.project_side(project_case(name, context, batches))
    steps = args.steps or DEFAULT_STEPS[kind]
    names = ("reference", "project")
    result = peers.compare(reference, project, steps, args.repeats, batch, name, names)
    return {"row": name, "kind": kind, "batch": batch, "steps": steps, **result}


HEADER = ("row", "batch", "ref ms", "proj ms", "ref/proj", "ref cpu ms", "proj cpu ms",
          "ref params", "proj params")  # fmt: skip


def table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One aligned line per row: medians of wall and CPU ms per call, ratio, parameters."""
    cells = [list(HEADER)]
    for row in rows:
        ref, proj = row["reference"], row["project"]
        cells.append(
            [row["row"], str(row["batch"]), f"{ref['ms']:.1f}", f"{proj['ms']:.1f}"]
            + [f"{row['ratio']:.2f}", f"{ref['cpu_ms']:.1f}", f"{proj['cpu_ms']:.1f}"]
            + [f"{ref['params']:,}", f"{proj['params']:,}"]
        )
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADER))]
    return ["  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in cells]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ncvqvae_reference")
    parser.add_argument("--ref_repo", type=pathlib.Path, required=True, help="its checkout")
    parser.add_argument("--rows", default="*", help=f"names or patterns, of {', '.join(ROWS)}")
    parser.add_argument("--steps", type=int, help="calls per block (default 5; sampling 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per side")
    parser.add_argument("--torch_threads", type=int, help="torch.set_num_threads (default: its)")
    parser.add_argument("--json", type=pathlib.Path, default=DEFAULT_JSON, help="results file")
    args = parser.parse_args(argv)
    common.select_rows(parser, args, list(ROWS))
    args.ref_repo = args.ref_repo.resolve()
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if torch is None:
        print(MISSING)
        return 0
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    ref = import_reference(args.ref_repo)
    context = common.Context(data.load_ucr("GunPoint"), sharding.make_mesh(), None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ncvqvae-ref-cache-") as cache:
        compilation_cache.enable(cache)  # empty: every compile is cold
        for name in args.rows:
            print(f"== {name}", flush=True)
            rows.append(run_row(name, ref, args, context))
    env = peers.environment("cpu")  # after the rows ran: XLA's thread pool exists
    print(
        f"\njax {env['jax']} ({env['backend']}), XLA:CPU Eigen pool {env['xla_eigen_threads']} "
        f"threads; torch {env['torch']}, {env['torch_threads']} threads; host "
        f"{env['cpu_model']}, {env['affinity_cpus']} CPUs\nms per call: medians over "
        f"{args.repeats} alternating blocks, wall and process CPU time; ref/proj = reference "
        "ms / project ms; params = trainable parameters"
    )
    print("\n".join(table(rows)))
    arguments = {**vars(args), "json": str(args.json), "ref_repo": str(args.ref_repo)}
    common.write_results(args.json, "benchmarks.ncvqvae_reference", arguments, env, rows)
    return 0


if __name__ == "__main__":
    huge_pages.restart_with_huge_pages()
    sys.exit(main())
