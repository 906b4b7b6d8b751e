"""Issue 13's MMVM diagnosis: one PolyDigits run of a preset, one JSON line of metrics (unimodal probe, self-recon
MSE, coherence |S|=1, and the latent diagnostics: posterior sd, spread of the posterior means, RMS m0-m1 distance).

    python bench/mmvm_fidelity.py MODEL BETA EPOCHS SEED ['{"prior": {...}}'] [--lr LR] [--tag TAG] [--out F.jsonl]
    python bench/mmvm_fidelity.py --table F.jsonl ...      # mean over seeds per (tag, beta), as a markdown table
    python bench/mmvm_fidelity.py --figure OUT.png TAG,TAG F.jsonl ...   # the study's frontier figure of those tags

Every run scores coherence with the same classifiers (trained once, 10 epochs, cached in --classifiers DIR), so
rows compare with each other; settings as issue 13's table: shared_dim 16, batch 256, Adam, 1 torch thread.
The closing note of issue 13 lists the commands behind its tables, e.g.
    for b in 0.5 1 2; do python bench/mmvm_fidelity.py mmvm $b 20 0 --tag mmvm; done
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
from mmvae.datasets import PolyDigits  # noqa: E402
from mmvae.evaluation.coherence import conditional_coherence  # noqa: E402
from mmvae.evaluation.probe import latent_classification  # noqa: E402
from mmvae.models import build  # noqa: E402
from mmvae.study.reconstruction import self_reconstruction  # noqa: E402


def table(paths: list[str]) -> None:
    """Mean over seeds per (tag, beta) of the rows in the JSONL files."""
    from collections import defaultdict

    groups = defaultdict(list)
    for line in (ln for f in paths for ln in open(f)):
        r = json.loads(line)
        groups[(r["tag"], r["beta"])].append(r)
    print("| tag | beta | seeds | probe | self-recon MSE | coherence |S|=1 | post sd | spread of means | RMS m0-m1 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (tag, beta), rs in sorted(groups.items()):
        m = lambda k, rs=rs: sum(r[k] for r in rs) / len(rs)  # noqa: E731
        print(f"| {tag} | {beta:g} | {','.join(str(r['seed']) for r in rs)} | {m('probe'):.3f} | {m('rec'):.4f} | "
              f"{m('coh'):.3f} | {m('post_sd'):.2f} | {m('mean_spread'):.2f} | {m('rms_m0_m1'):.2f} |")


@torch.no_grad()
def diagnostics(model, data):
    x = {m: data.data[m][:1000] for m in model.names}
    enc = model.encode(*model.check(x, None))
    mu, lv = enc.experts.mu, enc.experts.logvar  # [M, B, D]
    sd = lv.mul(0.5).exp().mean().item()
    spread = mu.std(1).mean().item()  # std over samples of the posterior means, per dim, averaged
    rms01 = (mu[0] - mu[1]).pow(2).mean().sqrt().item()
    return {"post_sd": sd, "mean_spread": spread, "rms_m0_m1": rms01}


def figure(out: str, tags: str, paths: list[str]) -> None:
    """The MMVM paper's frontier (`mmvae.study.summary.study_figure`) from the rows of the given tags: one line per
    tag across beta, mean and standard deviation over seeds."""
    from mmvae.study.summary import study_figure, summarise_rows

    keep = tags.split(",")
    rows = [json.loads(ln) for f in paths for ln in open(f)]
    rows = [{"model": r["tag"], "beta": r["beta"], "seed": r["seed"], "recon_self": r["rec"],
             "probe_unimodal": r["probe"], "coherence_mean": r["coh"]} for r in rows if r["tag"] in keep]
    rows.sort(key=lambda r: (keep.index(r["model"]), r["beta"]))
    study_figure(summarise_rows(rows), Path(out), labels={"coherence_mean": "coherence |S| = 1"})
    print(out)


def main():
    if sys.argv[1:2] == ["--table"]:
        return table(sys.argv[2:])
    if sys.argv[1:2] == ["--figure"]:
        return figure(sys.argv[2], sys.argv[3], sys.argv[4:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model"), p.add_argument("beta", type=float), p.add_argument("epochs", type=int)
    p.add_argument("seed", type=int), p.add_argument("over", nargs="?", default="{}")
    p.add_argument("--lr", type=float, default=1e-3), p.add_argument("--tag", default="")
    p.add_argument("--shared-dim", type=int, default=16), p.add_argument("--out", default="mmvm_fidelity.jsonl")
    p.add_argument("--classifiers", type=Path, default=Path("mmvm_fidelity_classifiers"))
    a = p.parse_args()
    train, test = PolyDigits("train"), PolyDigits("test")
    clfs = cached_classifiers(train, test, a.classifiers, epochs=10)
    over = json.loads(a.over)
    torch.manual_seed(a.seed)
    model = build(a.model, train, shared_dim=a.shared_dim, beta=a.beta, **over)
    t = time.time()
    Trainer(model, max_epochs=a.epochs, batch_size=256, lr=a.lr, device="cpu", seed=a.seed, progress=False).fit(train)
    train_s = time.time() - t
    model.eval()
    torch.manual_seed(0)
    probe = latent_classification(model, train, test, n_train=2000)["per_size"]["1"]
    rec = self_reconstruction(model, test)["mean"]
    coh = conditional_coherence(model, test, clfs)["per_size"]["1"]
    row = {"tag": a.tag, "model": a.model, "beta": a.beta, "epochs": a.epochs, "seed": a.seed, "lr": a.lr,
           "shared_dim": a.shared_dim, "over": over, "probe": round(probe, 4), "rec": round(rec, 5),
           "coh": round(coh, 4), **{k: round(v, 3) for k, v in diagnostics(model, test).items()},
           "train_s": round(train_s, 1)}
    emit(row, a.out)


if __name__ == "__main__":
    sys.exit(main())
