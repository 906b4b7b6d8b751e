"""Issue 10's evidence: presets with and without a latent-structure regulariser, one JSON line per run.

    python bench/latent_structure.py toy MODEL WEIGHT EPOCHS SEED [--out F.jsonl]        # separation
    python bench/latent_structure.py polydigits MODEL WEIGHT EPOCHS SEED [--out F.jsonl] # contrastive
    python bench/latent_structure.py table F.jsonl ...

toy (SharedPrivateToy, 3 modalities, shared 2 / private 2 factors): MODEL with private latents (dmvae, mmvaeplus;
shared_dim 4, private_dim 4) and `separation` at WEIGHT; the R^2 table from the latent blocks to the factors, fit
on the training split, scored on the test split: its diagonal (shared -> shared factor, private/m -> m's factor)
and its leakage (shared -> private factors, private/m -> shared factor, private/m -> other modalities' factors).
polydigits (5 modalities, shared 16): MODEL (mopoe, mmvm) with `contrastive` at WEIGHT (temperature 0.1):
self-reconstruction MSE (each modality from its own posterior), unimodal linear probe, coherence |S|=1
(classifiers trained once, cached), modality gap and recall@1.
One torch thread, batch 256, Adam 1e-3.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
torch.set_num_threads(1)
from common import cached_classifiers, emit  # noqa: E402  (bench/common.py, beside this script)

from mmvae import Trainer  # noqa: E402
from mmvae.datasets import get_dataset  # noqa: E402
from mmvae.evaluation.alignment import latent_alignment  # noqa: E402
from mmvae.evaluation.coherence import conditional_coherence  # noqa: E402
from mmvae.evaluation.disentanglement import latent_disentanglement  # noqa: E402
from mmvae.evaluation.probe import latent_classification  # noqa: E402
from mmvae.models import build  # noqa: E402
from mmvae.study.reconstruction import self_reconstruction  # noqa: E402


def leakage(r2: dict, names: list[str]) -> dict:
    """The R^2 table's diagonal and off-diagonal (leakage) means."""
    priv = [f"private/{n}" for n in names if f"private/{n}" in r2]
    return {
        "shared_to_shared": r2["shared"]["shared"],
        "private_to_own": sum(r2[p][p.split("/")[1]] for p in priv) / len(priv),
        "shared_to_private": sum(r2["shared"][n] for n in names) / len(names),
        "private_to_shared": sum(r2[p]["shared"] for p in priv) / len(priv),
        "private_to_other": sum(r2[p][n] for p in priv for n in names if n != p.split("/")[1])
        / (len(priv) * (len(names) - 1)),
    }


def run(args) -> dict:
    train, test = get_dataset(args.dataset, "train"), get_dataset(args.dataset, "test")
    term = "separation" if args.dataset == "toy" else "contrastive"
    reg = {term: args.weight} if term == "separation" else {term: {"weight": args.weight, "temperature": 0.1}}
    sizes = dict(shared_dim=4, private_dim=4) if args.dataset == "toy" else dict(shared_dim=16)
    torch.manual_seed(args.seed)
    model = build(args.model, train, regularisers=reg if args.weight > 0 else None, **sizes)
    start = time.time()
    Trainer(model, max_epochs=args.epochs, batch_size=256, progress=False, device="cpu", seed=args.seed).fit(train)
    model.eval()
    row = {"dataset": args.dataset, "model": args.model, "term": term, "weight": args.weight, "epochs": args.epochs,
           "seed": args.seed, "train_s": round(time.time() - start, 1)}
    if args.dataset == "toy":
        row.update(leakage(latent_disentanglement(model, train, test)["r2"], list(model.names)))
        return row
    clf = cached_classifiers(train, test, args.classifiers, epochs=10)
    row["self_recon_mse"] = self_reconstruction(model, test)["mean"]
    row["probe_1"] = latent_classification(model, train, test, n_train=2000)["per_size"]["1"]
    row["coherence_1"] = conditional_coherence(model, test, clf)["per_size"]["1"]
    al = latent_alignment(model, train, test, n_train=2000)
    row["modality_gap"] = al["modality_gap_mean"]
    row["recall_1"] = al["retrieval"]["mean"]["recall@1"]
    row["recall_1_chance"] = al["retrieval"]["mean_chance"]["recall@1"]
    row["cca_mean"] = al["cca"]["mean_all"]
    return row


def table(paths: list[str]) -> None:
    from collections import defaultdict

    groups = defaultdict(list)
    for line in (ln for f in paths for ln in open(f)):
        r = json.loads(line)
        groups[(r["dataset"], r["model"], r["term"], r["weight"], r["epochs"])].append(r)
    keys = ["shared_to_shared", "private_to_own", "shared_to_private", "private_to_shared", "private_to_other",
            "self_recon_mse", "probe_1", "coherence_1", "modality_gap", "recall_1", "recall_1_chance", "cca_mean"]
    print("| dataset | model | term | weight | epochs | seeds | " + " | ".join(keys) + " |")
    print("|" + "---|" * (6 + len(keys)))
    for (ds, model, term, w, epochs), rs in sorted(groups.items()):
        def m(k, rs=rs):
            vals = [r[k] for r in rs if k in r]
            return f"{sum(vals) / len(vals):.3f}" if vals else ""
        seeds = ",".join(str(r["seed"]) for r in rs)
        print(f"| {ds} | {model} | {term} | {w:g} | {epochs} | {seeds} | " + " | ".join(m(k) for k in keys) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", choices=["toy", "polydigits", "table"])
    p.add_argument("rest", nargs="+")
    p.add_argument("--classifiers", default="/tmp/mmvae_latent_structure_classifiers")
    p.add_argument("--out")
    a = p.parse_args()
    if a.dataset == "table":
        return table(a.rest)
    model, weight, epochs, seed = a.rest
    args = argparse.Namespace(dataset=a.dataset, model=model, weight=float(weight), epochs=int(epochs),
                              seed=int(seed), classifiers=a.classifiers)
    emit(run(args), a.out)


if __name__ == "__main__":
    main()
