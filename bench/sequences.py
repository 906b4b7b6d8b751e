"""Issue 15's evidence on sequences and counts: one run of a preset with a family of ready-made networks, one JSON
line of metrics; trivial baselines on the same data; a markdown table of the lines.

    python bench/sequences.py run DATASET MODEL NETWORKS EPOCHS SEED [--lik L] [--beta B] [--out F.jsonl]
    python bench/sequences.py baselines DATASET [--out F.jsonl]
    python bench/sequences.py table F.jsonl ...

DATASET: basicmotions (accelerometer, gyroscope) or spikes (five subjects' counts). NETWORKS: auto | mlp | tconv
| transformer. Metrics, on the test split: cross imputation MSE per direction (the mean of p(x_m | x_m') vs the real
series, gaps excluded) and its mean; conditional coherence |S|=1 (classifiers trained once on the real training
data, 20 epochs, the same for every run; cached in --classifiers DIR); the linear probe of the class from each
modality's shared posterior mean; for count modalities bits per spike (self, cross) against the training set's mean
rates, and the shared/private R^2 table where the data keep their factors. Baselines: the training mean, and the
nearest neighbour (Euclidean) in the other modality among the training tuples.
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
from mmvae.evaluation.alignment import latent_alignment, unimodal_means  # noqa: E402
from mmvae.evaluation.coherence import conditional_coherence  # noqa: E402
from mmvae.evaluation.counts import count_bits_per_spike, count_modalities, training_null_rates  # noqa: E402
from mmvae.evaluation.disentanglement import latent_disentanglement  # noqa: E402
from mmvae.evaluation.probe import latent_classification, linear_probe  # noqa: E402
from mmvae.models import build  # noqa: E402


def masked_mse(pred: torch.Tensor, true: torch.Tensor) -> float:
    """Mean squared error over the entries of `true` that are not NaN (padding, gaps)."""
    keep = ~true.isnan()
    return float(((pred - torch.nan_to_num(true)) ** 2)[keep].mean())


def directions(names: list[str]) -> list[tuple[str, str]]:
    """(source, target) pairs scored for cross imputation: every ordered pair for two modalities, else each
    modality from the next one (a ring), to keep five-subject spikes cheap."""
    if len(names) == 2:
        return [(names[0], names[1]), (names[1], names[0])]
    return [(names[(i + 1) % len(names)], n) for i, n in enumerate(names)]


@torch.no_grad()
def imputation(model, test) -> dict:
    """Cross-imputation MSE per direction, from the likelihood's mean."""
    model.eval()
    out = {}
    for src, dst in directions(test.modalities):
        pred = model.impute({src: test.data[src]}, targets=[dst])[dst]
        out[f"{src}->{dst}"] = masked_mse(pred.float(), test.data[dst].float())
    return out


@torch.no_grad()
def transfer_probe(model, train, test) -> float:
    """A linear probe of the class fit on one modality's unimodal shared means (training split) and scored on the
    next modality's (test split), mean over the ring of modalities: high only where the modalities' latent spaces
    line up (the MMVM paper's cross-subject claim)."""
    (mu_tr, av_tr), (mu_te, av_te) = unimodal_means(model, train), unimodal_means(model, test)  # [M, N, D], [N, M]
    accs = []
    for src, dst in directions(list(model.names)):
        i, j = model.names.index(src), model.names.index(dst)
        tr, te = av_tr[:, i], av_te[:, j]
        accs.append(linear_probe(mu_tr[i][tr].float(), train.labels[tr], mu_te[j][te].float(), test.labels[te],
                                 standardize=True))
    return sum(accs) / len(accs)


def run(args) -> dict:
    train, test = get_dataset(args.dataset, "train"), get_dataset(args.dataset, "test")
    torch.manual_seed(args.seed)
    kw = {"beta": args.beta} if args.beta is not None else {}
    if args.lik is not None:
        train.likelihoods = dict.fromkeys(train.modalities, args.lik)
    model = build(args.model, train, networks=args.networks, **kw)
    start = time.time()
    Trainer(model, max_epochs=args.epochs, batch_size=args.batch_size, progress=False, device="cpu",
            seed=args.seed).fit(train)
    row = {"dataset": args.dataset, "model": args.model, "networks": args.networks, "lik": args.lik or "default",
           "beta": model.beta, "epochs": args.epochs, "seed": args.seed, "train_s": round(time.time() - start, 1)}
    model.eval()
    row["imputation"] = imputation(model, test)
    row["imputation_mean"] = sum(row["imputation"].values()) / len(row["imputation"])
    if test.labels is not None and int(test.labels.min()) >= 0:
        clf = cached_classifiers(train, test, Path(args.classifiers) / args.dataset, epochs=20)
        row["classifier_acc"] = {m: c.meta["test_accuracy"] for m, c in clf.items()}
        coh = conditional_coherence(model, test, clf)
        row["coherence_1"] = coh["per_size"]["1"]
        probe = latent_classification(model, train, test)
        row["probe_1"] = probe["per_size"]["1"]
    counts = list(model.names) if args.dataset == "spikes" else count_modalities(model)  # Gaussian means as rates
    if counts:
        bps = count_bits_per_spike(model, test, counts, null=training_null_rates(train, counts))
        row["bps_self"], row["bps_cross"] = bps["mean_self"], bps["mean_cross"]
    if len(model.names) > 1:
        al = latent_alignment(model, train, test, n_train=2000)
        row["modality_gap"], row["recall_1"] = al["modality_gap_mean"], al["retrieval"]["mean"]["recall@1"]
        row["recall_1_chance"] = al["retrieval"]["mean_chance"]["recall@1"]
        if test.labels is not None and int(test.labels.min()) >= 0:
            row["transfer_probe"] = transfer_probe(model, train, test)
    if isinstance(train.targets, dict):
        r2 = latent_disentanglement(model, train, test)["r2"]
        names = list(model.names)
        row["r2_shared_shared"] = r2["shared"]["shared"]
        own = [r2[f"private/{n}"][n] for n in names if f"private/{n}" in r2]
        if own:
            row["r2_private_own"] = sum(own) / len(own)
        row["r2_shared_private"] = sum(r2["shared"][n] for n in names) / len(names)
    return row


def baselines(args) -> list[dict]:
    """The training mean and the nearest training neighbour in the source modality."""
    train, test = get_dataset(args.dataset, "train"), get_dataset(args.dataset, "test")
    rows = []
    mean = {"dataset": args.dataset, "model": "training mean", "networks": "-", "imputation": {}}
    nn_ = {"dataset": args.dataset, "model": "nearest neighbour", "networks": "-", "imputation": {}}
    for src, dst in directions(test.modalities):
        tr_dst = train.data[dst].float()
        mean["imputation"][f"{src}->{dst}"] = masked_mse(tr_dst.nanmean(0).expand_as(test.data[dst]),
                                                         test.data[dst].float())
        a, b = torch.nan_to_num(test.data[src].float()).flatten(1), torch.nan_to_num(train.data[src].float()).flatten(1)
        idx = torch.cdist(a, b).argmin(1)  # [N_test]
        nn_["imputation"][f"{src}->{dst}"] = masked_mse(torch.nan_to_num(tr_dst[idx]), test.data[dst].float())
    for r in (mean, nn_):
        r["imputation_mean"] = sum(r["imputation"].values()) / len(r["imputation"])
        rows.append(r)
    return rows


def table(paths: list[str]) -> None:
    """Mean over seeds per (dataset, model, networks, likelihood)."""
    from collections import defaultdict

    groups = defaultdict(list)
    for line in (ln for f in paths for ln in open(f)):
        r = json.loads(line)
        groups[(r["dataset"], r["model"], r["networks"], r.get("lik", "-"), r.get("beta", "-"),
                r.get("epochs", "-"))].append(r)
    keys = ["imputation_mean", "coherence_1", "probe_1", "transfer_probe", "recall_1", "recall_1_chance",
            "modality_gap", "bps_self", "bps_cross", "r2_shared_shared", "r2_private_own", "r2_shared_private"]
    dirs = sorted({d for rs in groups.values() for r in rs for d in r["imputation"]})
    print("| dataset | model | networks | likelihood | beta | epochs | seeds | " + " | ".join(f"MSE {d}" for d in dirs)
          + " | " + " | ".join(keys) + " |")
    print("|" + "---|" * (7 + len(dirs) + len(keys)))
    for (ds, model, nets, lik, beta, epochs), rs in sorted(groups.items(), key=lambda kv: [str(k) for k in kv[0]]):
        def m(get, rs=rs):
            vals = [v for v in (get(r) for r in rs) if v is not None]
            return f"{sum(vals) / len(vals):.3f}" if vals else ""
        cells = [m(lambda r, d=d: r["imputation"].get(d)) for d in dirs] + [m(lambda r, k=k: r.get(k)) for k in keys]
        seeds = ",".join(str(r.get("seed", "-")) for r in rs)
        print(f"| {ds} | {model} | {nets} | {lik} | {beta} | {epochs} | {seeds} | " + " | ".join(cells) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    for a in ("dataset", "model", "networks"):
        r.add_argument(a)
    r.add_argument("epochs", type=int)
    r.add_argument("seed", type=int)
    r.add_argument("--lik", help="likelihood of every modality (default: the dataset's)")
    r.add_argument("--beta", type=float)
    r.add_argument("--batch-size", dest="batch_size", type=int, default=64)
    r.add_argument("--classifiers", default="/tmp/mmvae_seq_classifiers")
    r.add_argument("--out")
    b = sub.add_parser("baselines")
    b.add_argument("dataset")
    b.add_argument("--out")
    t = sub.add_parser("table")
    t.add_argument("files", nargs="+")
    args = p.parse_args()
    if args.cmd == "table":
        return table(args.files)
    rows = [run(args)] if args.cmd == "run" else baselines(args)
    for row in rows:
        emit(row, args.out)


if __name__ == "__main__":
    main()
