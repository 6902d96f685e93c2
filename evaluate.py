"""Evaluates a trained experiment: linear probes, FID, IS and CAS (SPEC §5).

  python evaluate.py --workdir=runs/gp                        # SPEC: 1000-epoch FCNs
  python evaluate.py --workdir=runs/gp --fcn_epochs=100 --cas_epochs=100 --seed=1
  SSL_VQVAE_CACHE=/data/fcn python evaluate.py --workdir=runs/gp   # where FCNs are cached

Writes `<workdir>/eval/report.json`, `report.md` and figures. The FID/IS classifier is trained
once per dataset (and epoch count) and cached in `--cache_dir`; interrupted classifier training
resumes. Same as `python -m ssl_vqvae.evaluate`.
"""

from ssl_vqvae import cli, evaluate, huge_pages

if __name__ == "__main__":
    huge_pages.restart_with_huge_pages()
    evaluate.define_flags()
    cli.run(evaluate.main)
