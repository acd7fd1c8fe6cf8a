"""Stage 2 of a pseudo-label run again, on its finished stage 1, with other labellings:
the time each takes, the labels' agreement with the true bias labels, and how well the
labels single out the bias-conflicting training samples.

    python benchmarks/pseudo_stage2.py runs/pseudo-table/end-pseudo-cluster-rho0.997-seed1 \
        --data-dir ../shared/data/mnist --threads 1 \
        [--labellings cluster:2 cluster:auto predictions]

"Singled out" counts a sample whose label is not its class's bulk: outside the largest
cluster of its class (cluster), or predicted as another class (predictions). Recall: the
share of conflicting samples singled out; precision: the share of singled-out samples that
are conflicting. Nothing in the run folder is changed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from endebias.agreement import label_agreement
from endebias.training import records
from endebias.training.config import TrainConfig
from endebias.training.pseudo_label_stages import STAGE1, derive_labels


def singled_out(labels: np.ndarray, targets: np.ndarray, labelling: str) -> np.ndarray:
    if labelling == "predictions":
        return labels != targets
    # Cluster labels are numbered class by class, largest cluster first.
    first = {t: labels[targets == t].min() for t in np.unique(targets)}
    return labels != np.vectorize(first.get)(targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data-dir")
    parser.add_argument("--labellings", nargs="+", default=["cluster:2", "cluster:auto",
                                                            "predictions"])
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    recorded = records.read_json(args.run_dir / records.CONFIG)
    for item in args.labellings:
        labelling, _, k = item.partition(":")
        options = {"labelling": labelling, **({"k": k if k == "auto" else int(k)} if k else {})}
        config = TrainConfig.from_dict(
            {**recorded, "pseudo_options": {**recorded["pseudo_options"], **options}})
        started = time.perf_counter()
        labels, benchmark = derive_labels(config, args.run_dir / STAGE1, data_dir=args.data_dir)
        seconds = time.perf_counter() - started
        targets = benchmark.train.targets.cpu().numpy()
        biases = benchmark.train.biases.cpu().numpy()
        agreement = label_agreement(labels, biases)
        conflicting = biases != targets
        out = singled_out(labels, targets, labelling)
        hits, total, chosen = int((out & conflicting).sum()), int(conflicting.sum()), int(out.sum())
        print(f"{item}: {seconds:.0f} s (data, one forward pass, labelling); "
              f"{agreement['num_pseudo_labels']} labels, NMI {100 * agreement['nmi']:.2f}, "
              f"matched {100 * agreement['matched_acc']:.2f}; conflicting {total}, "
              f"singled out {chosen}, recall {hits / max(total, 1):.4f}, "
              f"precision {hits / max(chosen, 1):.4f}", flush=True)


if __name__ == "__main__":
    main()
