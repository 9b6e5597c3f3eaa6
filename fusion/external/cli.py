"""External validation (paper §4.5, Table 2) and evaluation of saved runs on (other) data.

Train on one configured dataset, evaluate on another with the same tasks and modalities, or a
subset of them: a modality the target lacks is missing for every sample (MIMIC-IV-MM →
MIMIC-III, which has no chest X-rays; demo: two demo cohorts drawn with shifted generator
parameters, ``python -m cohorts demo … --shift 0.5``). Config::

    external:
      - {source: demo-mimic, target: demo-mimic-shift}

For every method the source's ``full`` run (all seeds) is loaded from its checkpoints, the
target's caches are read with the SOURCE's standardisation statistics, and each seed is
evaluated on the target's ``external`` rows (all of its rows when it has none: the whole
cohort is unseen) with the decision thresholds chosen on the SOURCE's validation split. The
result is written in the run layout under the source, so ``python -m fusion evaluate``
collects it with everything else::

    results/{source}/runs/external-{target}/{method}/seed{k}/{metrics.json,predictions.parquet}
    results/{source}/runs/external-{target}/{method}/summary.json

Expert caches must describe the same embedding space in both cohorts. Experts with a fixed
model (FMs, MiniLM, radiomics features) do. Experts fitted on a cohort's training split
(TF-IDF+SVD, a time-series variable list learnt from the files) do when the target was
extracted with the source's fit — the workflow passes ``--fit-manifest`` (the source's
manifest) to every extraction of an external target — which their cache metadata shows (the
preprocess hash covers the fit). The RAG branch (projection and image bridge fitted per
cohort) and any expert whose metadata differs are listed as ``unaligned_experts`` in
``summary.json`` (and in the table's header) with a warning. A different embedding dim is
an error.

:func:`evaluate_saved_runs` is also what the test-time protocols use (``fusion.protocols``):
a test-only corruption does not change the trained model, so it is evaluated on the ``full``
checkpoints instead of being retrained.
"""

from __future__ import annotations

import argparse

from fusion.evaluate import run_external
from medmix.cli import positive_int
from medmix.config import load_config_arg
from medmix.logs import setup_logging


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fusion external",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--config", default="config.yaml", help="config file, or inline JSON")
    parser.add_argument("--source", required=True)
    parser.add_argument("--target", required=True)
    parser.add_argument("--method", required=True)
    parser.add_argument("--out", help="default results/{source}/runs/external-{target}/{method}")
    parser.add_argument("--threads", type=positive_int, default=1)
    args = parser.parse_args(argv)
    setup_logging()
    cfg = load_config_arg(args.config)
    run_external(cfg, args.source, args.target, args.method, args.out, args.threads)
    return 0
