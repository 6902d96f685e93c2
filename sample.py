"""Generates series from a trained experiment.

  python sample.py --workdir=runs/gp                      # N per class, every class
  python sample.py --workdir=runs/gp --class_id=none      # unconditional
  python sample.py --workdir=runs/gp --class_id=1 --guidance_scale=2.0 --num_samples=64
  python sample.py --workdir=runs/gp --mask_unused_codes  # only codes the train tokens use

Writes `<workdir>/samples/samples.npz` (samples [N, L', C] in the archive's units, labels [N];
label = num_classes marks unconditional samples) and a PNG of generated vs real series. With
`--distributed` every process generates its part of each batch and process 0 writes.
"""

import math
import pathlib

import numpy as np
from absl import flags

from ssl_vqvae import Experiment, cli, huge_pages, layout, plots, processes
from ssl_vqvae.data import Split
from ssl_vqvae.errors import MissingInputError, UserError

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Experiment folder with trained stage1/ and stage2/.")
flags.DEFINE_integer(
    "num_samples", 32, "Samples per class (or in total for 'none').", lower_bound=1
)
flags.DEFINE_string("class_id", "all", "'all' (each class), 'none' (unconditional) or a class id.")
flags.DEFINE_float(
    "guidance_scale", None, "Classifier-free guidance (default: from config).", lower_bound=0.0
)
flags.DEFINE_float(
    "temperature", None, "Choice temperature of decoding (default: config).", lower_bound=0.0
)
flags.DEFINE_integer("steps", None, "Decoding steps T (default: config).", lower_bound=1)
flags.DEFINE_boolean(
    "mask_unused_codes",
    None,
    "Never sample codes the training tokens do not use (default: config).",
)
flags.DEFINE_integer("seed", 0, "Sampling seed.", lower_bound=0)
flags.DEFINE_string("output", None, "Output folder (default: <workdir>/samples).")
flags.mark_flag_as_required("workdir")
for _name in ("guidance_scale", "temperature"):
    flags.register_validator(
        _name, lambda value: value is None or math.isfinite(value), "expected a finite number"
    )


def _class_ids(spec: str, num_classes: int) -> list[int | None]:
    if spec == "all":
        return list(range(num_classes))
    if spec == "none":
        return [None]
    if not spec.lstrip("-").isdigit() or not 0 <= int(spec) < num_classes:
        raise UserError(f"--class_id={spec}; expected all, none or 0..{num_classes - 1}")
    return [int(spec)]


@processes.main_only
def _save_samples(path: pathlib.Path, series: np.ndarray, labels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, samples=series, labels=labels)


def _real_test_split(loaded: Experiment) -> Split | None:
    """The real test series to plot beside the samples, if the dataset can be read here."""
    try:
        return loaded.dataset.test
    except MissingInputError as error:
        print(f"plotting samples only: {error}")
        return None


def main(argv: list[str]) -> None:
    del argv
    layout.check_trained(FLAGS.workdir)
    workdir = pathlib.Path(FLAGS.workdir).expanduser().absolute()
    output = pathlib.Path(FLAGS.output).expanduser() if FLAGS.output else workdir / "samples"
    layout.check_writable(output)
    loaded = Experiment.load(workdir, require_prior=True)
    data = loaded.data
    class_ids = _class_ids(FLAGS.class_id, data.num_classes)
    series, labels = [], []
    for class_id in class_ids:
        samples, ids = loaded.sample(
            FLAGS.num_samples,
            class_id,
            guidance_scale=FLAGS.guidance_scale,
            num_steps=FLAGS.steps,
            choice_temperature=FLAGS.temperature,
            mask_unused_codes=FLAGS.mask_unused_codes,
            seed=FLAGS.seed,
        )
        series.append(samples)
        labels.append(ids)
    series, labels = np.concatenate(series), np.concatenate(labels)
    _save_samples(output / "samples.npz", series, labels)
    test = _real_test_split(loaded)
    rows = []
    for label in np.unique(labels)[:6]:
        name = "uncond." if label == data.num_classes else f"class {label}"
        if label < data.num_classes and test is not None:
            rows.append((f"real {name}", data.unscale(test.x[test.y == label])))
        rows.append((f"generated {name}", series[labels == label]))
    plots.plot_series_rows(output / "samples.png", rows, title=f"{data.name} samples")
    print(f"wrote {len(series)} samples to {output / 'samples.npz'} and {output / 'samples.png'}")


if __name__ == "__main__":
    huge_pages.restart_with_huge_pages()
    cli.run(main)
