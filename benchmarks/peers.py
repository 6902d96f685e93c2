"""The released PyTorch TimeVQVAE (`timevqvae` 1.0.1) against this library's two-branch model.

    python -m benchmarks.peers [--rows=stage1_b32,...] [--steps=N] [--repeats=5]
        [--device=cpu|cuda] [--json=benchmarks/results/peers.json]

Each row times one call on both sides, same hyperparameters, same GunPoint batches: a stage-1
update (forward, loss, backward, AdamW), a stage-2 update (tokenising with the frozen tokenizer
inside), or the generation of class-conditional series (LF then HF MaskGIT decoding, 10 steps
each, one prior pass per step, then both decoders). The package side is built as its README
and trainer do; ours from `configs/stage{1,2}_timevqvae.py` through the library's builders and
`train_state.compile_step` / `generate.make_generator`. After a warm-up (our compile timed on
its own), `--repeats` blocks of `--steps` calls alternate package / project, so a change of
machine load hits both sides alike. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import fnmatch
import itertools
import json
import pathlib
import shlex
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
ROWS = {  # row -> (what one call is, batch: series per call)
    "stage1_b32": ("stage1", 32),
    "stage1_b128": ("stage1", 128),
    "stage2_b32": ("stage2", 32),
    "stage2_b128": ("stage2", 128),
    "sampling_128": ("sampling", 128),
}
DEFAULT_STEPS = {"stage1": 10, "stage2": 10, "sampling": 1}


@dataclasses.dataclass
class Side:
    """One side of a row: `call()` runs one call, `sync(out)` waits for its results."""

    call: Callable[[], Any]
    sync: Callable[[Any], Any]
    params: int
    check: Callable[[], None]
    compile_s: float | None = None


def settings(stage: int) -> Any:
    return validation.validate(config_lib.load_config_file(f"stage{stage}_timevqvae"))


# --- the package (PyTorch) ---------------------------------------------------------------------


def torch_side(call: Callable[[], Any], params: int, device: str) -> Side:
    """A torch side: CUDA work is awaited at the end of a block, as JAX's is."""
    last: dict[str, Any] = {}

    def run() -> Any:
        last["out"] = call()
        return last["out"]

    def check() -> None:
        if not torch.isfinite(last["out"]).all():
            raise FloatingPointError("package: non-finite output")

    sync = (lambda out: torch.cuda.synchronize()) if device == "cuda" else (lambda out: None)
    return Side(run, sync, params, check)


def trainable(module: Any) -> list[Any]:
    return [p for p in module.parameters() if p.requires_grad]


def package_vqvae(first_x: Any, length: int) -> Any:
    """`VQVAE(in_channels=1, input_length=L)` after one training forward (k-means codebooks,
    BatchNorm statistics, and the encoders' token counts that `MaskGIT` reads)."""
    with warnings.catch_warnings():  # torch.nn.utils.weight_norm is deprecated
        warnings.simplefilter("ignore", FutureWarning)
        model = VQVAE(in_channels=1, input_length=length).to(first_x.device).train()
    with torch.no_grad():
        model(first_x)
    return model


def stage1_loss(out: Any) -> Any:
    """The package's stage-1 objective (its README's outputs, as its trainer sums them)."""
    recons, vq = out.recons_loss, out.vq_losses
    return recons["LF.time"] + recons["HF.time"] + vq["LF"]["loss"] + vq["HF"]["loss"]


def package_maskgit(vqvae: Any, num_classes: int, device: str) -> Any:
    """`MaskGIT` exactly as the package's README builds it."""

    def prior(hidden: int, layers: int, heads: int) -> Any:
        return PriorModelConfig(
            hidden, layers, heads, ff_mult=1, use_rmsnorm=True, p_unconditional=0.2
        )

    return MaskGIT(
        vqvae=vqvae,
        lf_choice_temperature=10.0,
        hf_choice_temperature=0.0,
        lf_num_sampling_steps=10,
        hf_num_sampling_steps=10,
        lf_codebook_size=1024,
        hf_codebook_size=1024,
        transformer_embedding_dim=128,
        lf_prior_model_config=prior(128, 4, 2),
        hf_prior_model_config=prior(32, 1, 1),
        classifier_free_guidance_scale=1.0,
        n_classes=num_classes,
    ).to(device)


def package_side(
    kind: str, batches: list[dict[str, Any]], ds: data.UCRDataset, device: str
) -> Side:
    """The package's update or sampler, built from the same batches as ours."""
    torch.manual_seed(0)
    np.random.seed(0)  # the package's training masks draw from numpy's global generator
    xs = [torch.from_numpy(b["x"].transpose(0, 2, 1).copy()).to(device) for b in batches]
    ys = [torch.from_numpy(b["y"].astype(np.int64))[:, None].to(device) for b in batches]
    cycle = itertools.cycle(list(zip(xs, ys, strict=True)))
    vqvae = package_vqvae(xs[0], ds.length)
    optim = settings(1 if kind == "stage1" else 2).optim
    model = vqvae if kind == "stage1" else package_maskgit(vqvae, ds.num_classes, device).train()
    params = trainable(model)
    count = sum(p.numel() for p in params)
    if kind == "sampling":
        model.eval()
        classes = torch.from_numpy(np.arange(len(xs[0])) % ds.num_classes).to(device)

        @torch.no_grad()
        def sample() -> Any:
            ids_l, ids_h = model.iterative_decoding(
                num_samples=len(classes), mode="cosine", class_condition=classes, device=device
            )
            lf = model.decode_token_ind_to_timeseries(ids_l, frequency="lf")
            return lf + model.decode_token_ind_to_timeseries(ids_h, frequency="hf")

        return torch_side(sample, count, device)
    optimizer = torch.optim.AdamW(params, lr=optim.learning_rate, weight_decay=optim.weight_decay)

    def step() -> Any:
        x, y = next(cycle)
        loss = stage1_loss(model(x)) if kind == "stage1" else model(x, y).total_mask_prediction_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return torch_side(step, count, device)


# --- this library (JAX) -----------------------------------------------------------------------


def project_optimizer(optim: Any) -> optax.GradientTransformation:
    """AdamW at the config's fixed rate and decay, as the package's `torch.optim.AdamW`."""
    return train_state.make_optimizer(
        optax.constant_schedule(optim.learning_rate), optim.weight_decay
    )


def project_case(kind: str, batches: list[dict[str, Any]], ds: data.UCRDataset) -> common.Case:
    """Our update or generator as a suite `Case`, on a one-device mesh (torch uses one)."""
    mesh = sharding.make_mesh(jax.devices()[:1])
    s1, s2 = settings(1), settings(2)
    tokenizer = stage1.build_model(s1, ds.length, ds.channels)
    rng = jax.random.key(0)
    if kind == "stage1":
        optimizer = project_optimizer(s1.optim)
        state = sharding.replicate(common.init_state(tokenizer, optimizer, batches[0]["x"]), mesh)
        step = train_state.make_train_step(stage1.make_loss_fn(tokenizer, s1.ssl), optimizer)
        device_batches = [sharding.shard_batch({"x": b["x"]}, mesh) for b in batches]
        return common.train_case(
            train_state.compile_step(step, mesh), state, device_batches, rng, {}
        )
    tokenizer_variables = common.init_state(
        tokenizer, project_optimizer(s1.optim), batches[0]["x"][:1]
    ).model_variables()
    prior = stage2_two_branch.build_prior(s2.prior, tokenizer, ds.num_classes)
    optimizer = project_optimizer(s2.optim)
    state = sharding.replicate(stage2_two_branch.init_prior(prior, optimizer)(rng), mesh)
    if kind == "stage2":
        loss_fn = stage2_two_branch.make_loss_fn(prior, tokenizer, s2.prior)
        step = train_state.compile_step(
            train_state.make_train_step(loss_fn, optimizer), mesh, tokenizer_variables
        )
        device_batches = [sharding.shard_batch(b, mesh) for b in batches]
        return common.train_case(step, state, device_batches, rng, {})
    generator = generate.make_generator(prior, tokenizer, decoding_config(s2.sampling, None))
    num_samples = len(batches[0]["x"])
    ids = np.arange(num_samples, dtype=np.int32) % ds.num_classes
    args = (
        state.model_variables(),
        sharding.replicate(tokenizer_variables, mesh),
        sharding.shard_batch({"y": ids}, mesh)["y"],
        rng,
        None,  # guidance None: one prior pass per step (scale 1, the package's cfg 1.0)
    )
    last: dict[str, Any] = {}

    def make_call(compiled: Any) -> Callable[[], Any]:
        keys = itertools.cycle(jax.random.split(rng, common.NUM_BATCHES))

        def call() -> Any:
            last["out"] = compiled(*args[:3], next(keys), None)
            return last["out"]

        return call

    def check() -> None:
        if not np.all(np.isfinite(np.asarray(last["out"]))):
            raise FloatingPointError("project: non-finite series")

    count = train_state.count_params(state.params)
    return common.Case({"params": count}, num_samples, generator, args, make_call, check)


def project_side(case: common.Case) -> Side:
    """Lowers and compiles our program (timed), then calls the compiled executable."""
    start = time.perf_counter()
    compiled = case.jitted.lower(*case.args).compile()
    compile_s = time.perf_counter() - start
    return Side(
        case.make_call(compiled), jax.block_until_ready, case.info["params"], case.check, compile_s
    )


# --- measurement -------------------------------------------------------------------------------


def block(side: Side, steps: int) -> None:
    out = None
    for _ in range(steps):
        out = side.call()
    side.sync(out)


def compare(package: Side, project: Side, steps: int, repeats: int, batch: int) -> dict[str, Any]:
    """Warm-up of each side, then `repeats` timed blocks of `steps` calls, alternating."""
    sides = {"package": package, "project": project}
    first = {name: common._timed(lambda s=side: block(s, 1)) for name, side in sides.items()}
    for side in sides.values():
        block(side, common.WARMUP_CALLS)
    wall: dict[str, list[float]] = {name: [] for name in sides}
    cpu: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(repeats):
        for name, side in sides.items():
            seconds, cpu_seconds = common._timed(lambda s=side: block(s, steps))
            wall[name].append(1000 * seconds / steps)
            cpu[name].append(1000 * cpu_seconds / steps)
    result: dict[str, Any] = {}
    for name, side in sides.items():
        side.check()
        timing = {**common._spread("ms", wall[name]), **common._spread("cpu_ms", cpu[name])}
        result[name] = {
            **timing,
            "samples_per_s": batch / (timing["ms"] / 1000),
            "params": side.params,
            "first_call_ms": 1000 * first[name][0],
            "compile_s": side.compile_s,
        }
    result["ratio"] = result["package"]["ms"] / result["project"]["ms"]
    result["params_equal"] = package.params == project.params
    return result


def run_row(name: str, ds: data.UCRDataset, steps: int | None, repeats: int, device: str) -> dict:
    kind, batch = ROWS[name]
    batches, _ = common.sample_batches(ds.train, batch, seed=0)
    package = package_side(kind, batches, ds, device)
    project = project_side(project_case(kind, batches, ds))
    steps = steps or DEFAULT_STEPS[kind]
    result = compare(package, project, steps, repeats, batch)
    if not result["params_equal"]:
        print(
            f"WARNING {name}: parameter counts differ: package {package.params:,}, "
            f"project {project.params:,}"
        )
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
    """Two lines per row (package, project): medians and spreads over the blocks."""
    cells = [list(HEADER)]
    for row in rows:
        for name in ("package", "project"):
            side = row[name]
            cells.append(
                [row["row"], name, str(row["batch"])]
                + [f"{side[key]:.1f}" for key in ("ms", "ms_min", "ms_max", "cpu_ms")]
                + [
                    f"{side['samples_per_s']:.0f}",
                    f"{side['params']:,}",
                    "-" if side["compile_s"] is None else f"{side['compile_s']:.1f}",
                    f"{side['first_call_ms']:.0f}",
                    f"{row['ratio']:.2f}x" if name == "project" else "",
                ]
            )
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADER))]
    return ["  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) for line in cells]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__)
    parser.add_argument(
        "--rows", default="*", help=f"comma-separated names or patterns: {', '.join(ROWS)}"
    )
    parser.add_argument("--steps", type=int, help="timed calls per block (default 10; sampling 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per side")
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), help="torch device (default: cuda if available)"
    )
    parser.add_argument("--json", type=pathlib.Path, default=DEFAULT_JSON, help="results file")
    parser.add_argument("--dataset", default="GunPoint", help="UCR dataset feeding the rows")
    parser.add_argument("--data_root", default="", help="UCR archive folder, searched first")
    args = parser.parse_args(argv)
    if min(args.steps or 1, args.repeats) < 1:
        parser.error("--steps and --repeats must be >= 1")
    patterns = [p.strip() for p in args.rows.split(",") if p.strip()]
    args.rows = [name for name in ROWS if any(fnmatch.fnmatch(name, p) for p in patterns)]
    if not args.rows:
        parser.error(f"--rows matches no row; rows: {', '.join(ROWS)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if torch is None:
        print(MISSING)
        return 0
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ds = data.load_ucr(args.dataset, args.data_root or None)
    rows = []
    with tempfile.TemporaryDirectory(prefix="peers-cache-") as cache:
        compilation_cache.enable(cache)  # empty: our compile times are cold
        for name in args.rows:
            print(f"== {name}", flush=True)
            rows.append(run_row(name, ds, args.steps, args.repeats, device))
    payload = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": shlex.join([sys.executable, "-m", "benchmarks.peers", *sys.argv[1:]]),
        "environment": {
            **common.environment(),
            **common.threads(),
            "torch": torch.__version__,
            "torch_device": device,
            "torch_threads": torch.get_num_threads(),
            "torch_interop_threads": torch.get_num_interop_threads(),
            "torch_cudnn_tf32": torch.backends.cudnn.allow_tf32,
            "torch_matmul_tf32": torch.backends.cuda.matmul.allow_tf32,
        },
        "rows": rows,
    }
    env = payload["environment"]
    print(
        f"\njax {env['jax']} on {env['backend']} ({env['device_kind']}), XLA Eigen threads "
        f"{env['xla_eigen_threads']}; torch {env['torch']} on {device}, {env['torch_threads']} "
        f"threads; host {env['cpu_model']}, {env['affinity_cpus']} CPUs"
    )
    print(
        f"ms per call: median (min, max) over {args.repeats} alternating blocks; "
        "pkg/proj = package ms / project ms"
    )
    print("\n".join(table(rows)))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    huge_pages.restart_with_huge_pages()
    sys.exit(main())
