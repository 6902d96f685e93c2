"""The released PyTorch TimeVQVAE (`timevqvae` 1.0.1) against this library's two-branch model.

    python -m benchmarks.peers [--rows=stage1_b32,...] [--steps=N] [--repeats=5]
        [--device=cpu|cuda] [--torch_threads=N] [--tiny] [--json=benchmarks/results/peers.json]

Each row times one call on both sides, same hyperparameters, same GunPoint batches: a stage-1
update (forward, loss, backward, AdamW), a stage-2 update (tokenising with the frozen tokenizer
inside), or the generation of class-conditional series (LF then HF MaskGIT decoding, 10 steps
each, one prior pass per step, then both decoders). The package side is built as its README
does; ours from `configs/stage{1,2}_timevqvae.py` through the library's builders and
`train_state.compile_step` / `generate.make_generator`. After a warm-up (our compile timed on
its own), `--repeats` blocks of `--steps` calls alternate package / project, so a change of
machine load hits both sides alike. Both sides take their sizes from the same two configs, at
full size or (`--tiny`) at their `:tiny` sizes. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import os
import pathlib
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import common  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from ssl_vqvae import (  # noqa: E402
    compilation_cache,
    config_lib,
    data,
    generate,
    huge_pages,
    sharding,
    stage1,
    stage2_two_branch,
    train_state,
    validation,
)
from ssl_vqvae.decoding import decoding_config  # noqa: E402

try:
    import torch
    from timevqvae.maskgit import MaskGIT, PriorModelConfig
    from timevqvae.vqvae import VQVAE
except ImportError as error:  # the `peers` extra is optional
    torch = None
    MISSING = f"benchmarks.peers: skipped, needs the peers extra: make peers ({error})"

DEFAULT_JSON = pathlib.Path(__file__).resolve().parent / "results" / "peers.json"
ROWS = {  # row -> (what one call is, series per call)
    "stage1_b32": ("stage1", 32),
    "stage1_b128": ("stage1", 128),
    "stage2_b32": ("stage2", 32),
    "stage2_b128": ("stage2", 128),
    "sampling_128": ("sampling", 128),
}
DEFAULT_STEPS = {"stage1": 10, "stage2": 10, "sampling": 1}  # a sampling call runs 20 steps
SIDES = ("package", "project")


@dataclasses.dataclass
class Side:
    """One side of a row: `call()` runs one call, `sync(out)` waits for its results, `check()`
    raises unless the last output is finite; `compile_s` is ours only (torch runs eagerly)."""

    call: Callable[[], Any]
    sync: Callable[[Any], Any]
    params: int
    check: Callable[[], None]
    compile_s: float | None = None


def settings(tiny: bool = False) -> tuple[Any, Any]:
    """Stage-1 and stage-2 settings of configs/stage{1,2}_timevqvae.py (`:tiny` if `tiny`); both
    sides are built from them."""
    arg = ":tiny" if tiny else ""
    return tuple(
        validation.validate(config_lib.load_config_file(f"stage{stage}_timevqvae{arg}"))
        for stage in (1, 2)
    )


def package_vqvae(model: Any, x: Any) -> Any:
    """`VQVAE` with the tokenizer settings `model` (at full size: the package's defaults)."""
    return VQVAE(
        in_channels=x.shape[1],
        input_length=x.shape[-1],
        n_fft=model.n_fft,
        init_dim=model.init_dim,
        hid_dim=model.hidden_dim,
        downsampled_width_l=model.downsampled_width,
        downsampled_width_h=model.hf_downsampled_width,
        encoder_n_resnet_blocks=model.num_res_blocks,
        decoder_n_resnet_blocks=model.num_res_blocks,
        codebook_size_l=model.codebook_size,
        codebook_size_h=model.hf_codebook_size,
        kmeans_init=model.kmeans_init,
        codebook_dim=model.codebook_dim,
    )


def package_maskgit(vqvae: Any, configs: tuple[Any, Any], num_classes: int) -> Any:
    """`MaskGIT` as the package's README builds it, with the sizes of `configs` (at full size:
    the README's values)."""
    model, prior, sampling = configs[0].model, configs[1].prior, configs[1].sampling

    def branch(hidden: int, layers: int, heads: int) -> Any:
        return PriorModelConfig(
            hidden,
            layers,
            heads,
            prior.ff_mult,
            use_rmsnorm=True,
            p_unconditional=prior.p_unconditional,
            emb_dropout=prior.dropout_rate,
        )

    return MaskGIT(
        vqvae=vqvae,
        lf_choice_temperature=sampling.choice_temperature,
        hf_choice_temperature=sampling.hf_choice_temperature,
        lf_num_sampling_steps=sampling.num_steps,
        hf_num_sampling_steps=sampling.hf_num_steps,
        lf_codebook_size=model.codebook_size,
        hf_codebook_size=model.hf_codebook_size,
        transformer_embedding_dim=prior.embed_dim,
        lf_prior_model_config=branch(prior.hidden_dim, prior.depth, prior.num_heads),
        hf_prior_model_config=branch(prior.hf_hidden_dim, prior.hf_depth, prior.hf_num_heads),
        classifier_free_guidance_scale=sampling.guidance_scale,
        n_classes=num_classes,
    )


def package_model(kind: str, x: Any, num_classes: int, configs: tuple[Any, Any]) -> Any:
    """The package's `VQVAE` after one training forward (k-means codebooks, BatchNorm
    statistics, the token counts `MaskGIT` reads), or the `MaskGIT` over it."""
    with warnings.catch_warnings():  # torch.nn.utils.weight_norm is deprecated
        warnings.simplefilter("ignore", FutureWarning)
        vqvae = package_vqvae(configs[0].model, x).to(x.device).train()
        with torch.no_grad():
            vqvae(x)
        if kind == "stage1":
            return vqvae
        return package_maskgit(vqvae, configs, num_classes).to(x.device)


def package_side(
    kind: str, batches: list[dict], num_classes: int, device: str, configs: tuple[Any, Any]
) -> Side:
    """The package's update (AdamW over its trainable parameters) or sampler."""
    torch.manual_seed(0)
    np.random.seed(0)  # its training masks draw from numpy's global generator
    xs = [torch.from_numpy(b["x"].transpose(0, 2, 1).copy()).to(device) for b in batches]
    ys = [torch.from_numpy(b["y"].astype(np.int64))[:, None].to(device) for b in batches]
    inputs = itertools.cycle(list(zip(xs, ys, strict=True)))
    model = package_model(kind, xs[0], num_classes, configs)
    params = [p for p in model.parameters() if p.requires_grad]
    optim = configs[0 if kind == "stage1" else 1].optim
    optimizer = torch.optim.AdamW(params, lr=optim.learning_rate, weight_decay=optim.weight_decay)
    classes = torch.arange(len(xs[0]), device=device) % num_classes
    last: dict[str, Any] = {}

    def step() -> Any:
        x, y = next(inputs)
        if kind == "stage1":
            out = model(x)  # the loss of its README / trainer
            recons, vq = out.recons_loss, out.vq_losses
            loss = recons["LF.time"] + recons["HF.time"] + vq["LF"]["loss"] + vq["HF"]["loss"]
        else:
            loss = model(x, y).total_mask_prediction_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    @torch.no_grad()
    def sample() -> Any:
        ids_l, ids_h = model.iterative_decoding(
            num_samples=len(classes), mode="cosine", class_condition=classes, device=device
        )
        lf = model.decode_token_ind_to_timeseries(ids_l, frequency="lf")
        return lf + model.decode_token_ind_to_timeseries(ids_h, frequency="hf")

    if kind == "sampling":
        model.eval()

    def call() -> Any:
        last["out"] = sample() if kind == "sampling" else step()
        return last["out"]

    def check() -> None:
        if not bool(torch.isfinite(last["out"]).all()):
            raise FloatingPointError(f"package {kind}: non-finite output")

    sync = torch.cuda.synchronize if device == "cuda" else lambda: None  # CUDA is asynchronous
    return Side(call, lambda out: sync(), sum(p.numel() for p in params), check)


def project_optimizer(optim: Any) -> optax.GradientTransformation:
    """AdamW at the config's fixed rate and decay, as the package's `torch.optim.AdamW`."""
    return train_state.make_optimizer(
        optax.constant_schedule(optim.learning_rate), optim.weight_decay
    )


def project_case(
    kind: str, batches: list[dict], ds: data.UCRDataset, configs: tuple[Any, Any]
) -> common.Case:
    """Our update or generator as a suite `Case`, on one device (as torch uses one)."""
    mesh = sharding.make_mesh(jax.devices()[:1])
    s1, s2 = configs
    tokenizer = stage1.build_model(s1, ds.length, ds.channels)
    rng = jax.random.key(0)
    # One example row whatever the batch: every row initialises the same program, compiled once
    # and then read from the persistent cache.
    tokenizer_state = common.init_state(tokenizer, project_optimizer(s1.optim), ds.train.x[:1])
    if kind == "stage1":
        step = train_state.make_train_step(
            stage1.make_loss_fn(tokenizer, s1.ssl), project_optimizer(s1.optim)
        )
        state = sharding.replicate(tokenizer_state, mesh)
        device_batches = [sharding.shard_batch({"x": b["x"]}, mesh) for b in batches]
        return common.train_case(
            train_state.compile_step(step, mesh), state, device_batches, rng, {}
        )
    tokenizer_variables = tokenizer_state.model_variables()
    prior = stage2_two_branch.build_prior(s2.prior, tokenizer, ds.num_classes)
    optimizer = project_optimizer(s2.optim)
    state = jax.jit(stage2_two_branch.init_prior(prior, optimizer))(rng)
    state = sharding.replicate(state, mesh)
    if kind == "stage2":
        loss_fn = stage2_two_branch.make_loss_fn(prior, tokenizer, s2.prior)
        step = train_state.compile_step(
            train_state.make_train_step(loss_fn, optimizer), mesh, tokenizer_variables
        )
        device_batches = [sharding.shard_batch(b, mesh) for b in batches]
        return common.train_case(step, state, device_batches, rng, {})
    generator = generate.make_generator(prior, tokenizer, decoding_config(s2.sampling, None))
    ids = np.arange(len(batches[0]["x"]), dtype=np.int32) % ds.num_classes
    variables = (state.model_variables(), sharding.replicate(tokenizer_variables, mesh))
    ids = sharding.shard_batch({"y": ids}, mesh)["y"]
    last: dict[str, Any] = {}

    def make_call(compiled: Any) -> Callable[[], Any]:
        keys = itertools.cycle(jax.random.split(rng, common.NUM_BATCHES))

        def call() -> Any:  # guidance None: one prior pass per step (scale 1 = the package's)
            last["out"] = compiled(*variables, ids, next(keys), None)
            return last["out"]

        return call

    def check() -> None:
        if not np.all(np.isfinite(np.asarray(last["out"]))):
            raise FloatingPointError("project sampling: non-finite series")

    info = {"params": train_state.count_params(state.params)}
    return common.Case(info, len(ids), generator, (*variables, ids, rng, None), make_call, check)


def project_side(case: common.Case) -> Side:
    """Lowers and compiles our program (timed), then calls the compiled executable."""
    start = time.perf_counter()
    compiled = case.jitted.lower(*case.args).compile()
    compile_s = time.perf_counter() - start
    call = case.make_call(compiled)
    return Side(call, jax.block_until_ready, case.info["params"], case.check, compile_s)


def block(side: Side, steps: int) -> None:
    """`steps` calls, then wait for the last one's results."""
    out = None
    for _ in range(steps):
        out = side.call()
    side.sync(out)


def compare(
    other: Side,
    project: Side,
    steps: int,
    repeats: int,
    batch: int,
    row: str,
    names: tuple[str, str] = SIDES,
) -> dict:
    """Warm-up of each side (its first call timed alone), then `repeats` rounds of one timed
    block of `steps` calls per side, `other` first. Results are keyed by `names` (the other
    side's, then "project"); a WARNING line names `row` when the parameter counts differ."""
    sides = dict(zip(names, (other, project), strict=True))
    first = {name: common._timed(lambda s=side: block(s, 1)) for name, side in sides.items()}
    for side in sides.values():
        block(side, common.WARMUP_CALLS)
    wall_ms: dict[str, list[float]] = {name: [] for name in names}
    cpu_ms: dict[str, list[float]] = {name: [] for name in names}
    for _ in range(repeats):
        for name, side in sides.items():
            wall, cpu = common._timed(lambda s=side: block(s, steps))
            wall_ms[name].append(1000 * wall / steps)
            cpu_ms[name].append(1000 * cpu / steps)
    result: dict[str, Any] = {}
    for name, side in sides.items():
        side.check()
        timing = {**common._spread("ms", wall_ms[name]), **common._spread("cpu_ms", cpu_ms[name])}
        result[name] = {
            **timing,
            "samples_per_s": batch / (timing["ms"] / 1000),
            "params": side.params,
            "first_call_ms": 1000 * first[name][0],
            "compile_s": side.compile_s,
        }
    result["ratio"] = result[names[0]]["ms"] / result[names[1]]["ms"]
    result["params_equal"] = other.params == project.params
    if not result["params_equal"]:
        print(
            f"WARNING {row}: trainable parameters differ: {names[0]} {other.params:,}, "
            f"{names[1]} {project.params:,}"
        )
    return result


def run_row(name: str, ds: data.UCRDataset, args: argparse.Namespace, device: str) -> dict:
    """Builds both sides of row `name` on the same batches and compares them."""
    kind, batch = ROWS[name]
    configs = settings(args.tiny)
    batches, _ = common.sample_batches(ds.train, batch, seed=0)
    package = package_side(kind, batches, ds.num_classes, device, configs)
    project = project_side(project_case(kind, batches, ds, configs))
    steps, repeats = args.steps or DEFAULT_STEPS[kind], args.repeats
    result = compare(package, project, steps, repeats, batch, name)
    return {"row": name, "kind": kind, "batch": batch, "steps": steps, "repeats": repeats, **result}


HEADER = (
    "row",
    "side",
    "batch",
    "ms/step",
    "min",
    "max",
    "cpu ms",
    "samples/s",
    "params",
    "compile s",
    "first ms",
    "pkg/proj",
)


def table(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Two lines per row (package, project) as aligned text."""
    cells = [list(HEADER)]
    for row in rows:
        for name in SIDES:
            side = row[name]
            compile_s = "-" if side["compile_s"] is None else f"{side['compile_s']:.1f}"
            cells.append(
                [row["row"], name, str(row["batch"])]
                + [f"{side[key]:.1f}" for key in ("ms", "ms_min", "ms_max", "cpu_ms")]
                + [f"{side['samples_per_s']:.0f}", f"{side['params']:,}", compile_s]
                + [
                    f"{side['first_call_ms']:.0f}",
                    f"{row['ratio']:.2f}" if name != SIDES[0] else "",
                ]
            )
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADER))]
    return ["  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in cells]


def environment(device: str) -> dict[str, Any]:
    """`common.environment()` and `common.threads()` (after the rows ran), plus torch's side."""
    return {
        **common.environment(),
        **common.threads(),
        "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", ""),  # see ssl_vqvae.huge_pages
        "torch": torch.__version__,
        "torch_device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "torch_cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "torch_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__)
    parser.add_argument("--rows", default="*", help=f"names or patterns, of {', '.join(ROWS)}")
    parser.add_argument("--steps", type=int, help="calls per block (default 10; sampling 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per side")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="torch's (default: cuda if any)")
    parser.add_argument(
        "--torch_threads", type=int, help="torch.set_num_threads (default: its own)"
    )
    parser.add_argument(
        "--tiny", action="store_true", help="both sides at the configs' :tiny sizes (smoke run)"
    )
    parser.add_argument("--json", type=pathlib.Path, default=DEFAULT_JSON, help="results file")
    parser.add_argument("--dataset", default="GunPoint", help="UCR dataset feeding the rows")
    parser.add_argument("--data_root", default="", help="UCR archive folder, searched first")
    args = parser.parse_args(argv)
    common.select_rows(parser, args, list(ROWS))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if torch is None:
        print(MISSING)
        return 0
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    ds = data.load_ucr(args.dataset, args.data_root or None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="peers-cache-") as cache:
        compilation_cache.enable(cache)  # empty: every step / generator compile is cold
        for name in args.rows:
            print(f"== {name}", flush=True)
            rows.append(run_row(name, ds, args, device))
    env = environment(device)
    print(
        f"\njax {env['jax']} on {env['device_kind']} ({env['backend']}), XLA:CPU Eigen pool "
        f"{env['xla_eigen_threads']} threads; torch {env['torch']} on {env['torch_device']}, "
        f"{env['torch_threads']} threads; host {env['cpu_model']}, {env['affinity_cpus']} CPUs"
        f"\nms per call: median, min, max over {args.repeats} alternating blocks; "
        "pkg/proj = package ms / project ms"
    )
    print("\n".join(table(rows)))
    arguments = {**vars(args), "json": str(args.json)}
    common.write_results(args.json, "benchmarks.peers", arguments, env, rows)
    return 0


if __name__ == "__main__":
    huge_pages.restart_with_huge_pages()
    sys.exit(main())
