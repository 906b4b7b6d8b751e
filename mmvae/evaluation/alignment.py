"""Cross-modal alignment of the shared latent: how close the unimodal posteriors q(z | x_m) of one tuple are.

Three views, each a data-free helper on embeddings plus `latent_alignment`, which encodes every tuple once:
- modality gap (Liang et al., NeurIPS 2022): ||mean_i a_i/|a_i| - mean_i b_i/|b_i||| between the centroids of two
  modalities' L2-normalised embeddings; 0 when they coincide, up to 2;
- cross-modal retrieval: tuple i's embedding in m queries the embeddings in m' of the N tuples observing both (cosine
  similarity); recall@k = P(tuple i of m' ranks in the top k), ties broken at random; chance k / N;
- canonical correlations: CCA directions fit on the training split, correlations of the projections on the test
  split (in-sample CCA is biased upwards when N is not >> D).
"""
from __future__ import annotations

import itertools

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..devices import module_device
from .probe import subset_embeddings
from .subset_batches import as_eval_data, row_chunks

KS = (1, 5)  # recall@k
RIDGE = 1e-3  # CCA: covariance + RIDGE * (its mean eigenvalue) * I
TIE = 1e-5  # retrieval: cosine similarities this close are level (float32 rounding)


def modality_gap(a: Tensor, b: Tensor) -> float:
    """||mean(a / |a|) - mean(b / |b|)||_2 of a [N, D] and b [N', D]: the distance of the normalised centroids."""
    return float((F.normalize(a.double(), dim=1).mean(0) - F.normalize(b.double(), dim=1).mean(0)).norm())


def retrieval_recall(a: Tensor, b: Tensor, ks=KS, chunk: int = 2048, tie: float = TIE) -> dict[str, dict]:
    """Recall@k both ways between paired rows of a and b [N, D], by cosine similarity: "a->b" (a_i queries b, a hit
    when b_i is in the top k) and "b->a". Ties (within `tie`) count as a random order: with g other candidates above
    the match and t level with it, P(hit@k) = clip(k - g, 0, t + 1) / (t + 1), so a constant embedding scores
    chance, k / N. The [N, N] similarities are built `chunk` query rows at a time; column counts accumulate."""
    an, bn = F.normalize(a.float(), dim=1), F.normalize(b.float(), dim=1)
    N = an.shape[0]
    diag = (an * bn).sum(1)  # [N]: sim(a_i, b_i)
    g_row, t_row, g_col, t_col = torch.zeros(4, N, device=an.device)
    for c in row_chunks(N, chunk):
        sim = an[c] @ bn.T  # [n, N]: row i = a_i against every b_j
        other = torch.ones_like(sim, dtype=torch.bool)
        i = torch.arange(sim.shape[0], device=sim.device)
        other[i, i + c.start] = False  # not the match itself
        d = diag[c, None]  # each row's own match
        g_row[c] = ((sim > d + tie) & other).sum(1)
        t_row[c] = (((sim - d).abs() <= tie) & other).sum(1)
        d = diag[None, :]  # each column's own match
        g_col += ((sim > d + tie) & other).sum(0)
        t_col += (((sim - d).abs() <= tie) & other).sum(0)

    def recall(g: Tensor, t: Tensor, k: int) -> float:
        return float(((k - g).clamp(0, None).minimum(t + 1) / (t + 1)).mean())

    return {"a->b": {k: recall(g_row, t_row, k) for k in ks}, "b->a": {k: recall(g_col, t_col, k) for k in ks}}


def _whitener(c: np.ndarray, ridge: float) -> np.ndarray:
    """(C + ridge * tr(C)/D * I)^(-1/2) of a covariance C [D, D], by its eigendecomposition."""
    lam = ridge * max(float(np.trace(c)) / len(c), 1e-12)
    w, v = np.linalg.eigh(c + lam * np.eye(len(c)))
    return (v / np.sqrt(np.maximum(w, lam))) @ v.T


def cca_fit(a: np.ndarray, b: np.ndarray, ridge: float = RIDGE) -> tuple:
    """CCA of a [N, Da] and b [N, Db]: whiten each block, T = Caa^-1/2 Cab Cbb^-1/2 = U S V^T.
    -> (mean_a, Wa [Da, k], mean_b, Wb [Db, k], S [k]) with k = min(Da, Db), components by S descending."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ma, mb = a.mean(0), b.mean(0)
    a0, b0, n = a - ma, b - mb, max(len(a) - 1, 1)
    wa, wb = _whitener(a0.T @ a0 / n, ridge), _whitener(b0.T @ b0 / n, ridge)
    u, s, vt = np.linalg.svd(wa @ (a0.T @ b0 / n) @ wb)
    k = min(a.shape[1], b.shape[1])
    return ma, wa @ u[:, :k], mb, wb @ vt[:k].T, s[:k]


def canonical_correlations(a_train, b_train, a_test=None, b_test=None, ridge: float = RIDGE) -> np.ndarray:
    """corr(a Wa_j, b Wb_j) of each CCA component j (fit on the training rows) on the test rows [k] (on the
    training rows when no test rows are given); a projection without variance correlates 0."""
    ma, wa, mb, wb, _ = cca_fit(a_train, b_train, ridge)
    a_test, b_test = (a_train, b_train) if a_test is None else (a_test, b_test)
    pa = (np.asarray(a_test, np.float64) - ma) @ wa  # [N, k]
    pb = (np.asarray(b_test, np.float64) - mb) @ wb
    pa, pb = pa - pa.mean(0), pb - pb.mean(0)
    den = np.sqrt((pa ** 2).sum(0) * (pb ** 2).sum(0))  # [k]
    return np.where(den > 1e-12, (pa * pb).sum(0) / np.maximum(den, 1e-300), 0.0)


def unimodal_means(model, data, batch_size: int | None = 20_000) -> tuple[Tensor, Tensor]:
    """The mean of q(z | x_m) of every modality for every tuple, from one encoding pass: (z [M, N, Ds], observed
    [N, M]); rows where m is missing are 0 (and not observed)."""
    names = list(model.names)
    shared = subset_embeddings(model, data, sizes=[1], batch_size=batch_size)["shared"]
    N, Ds = len(data), next(iter(shared.values()))[1].shape[-1]
    z = torch.zeros(len(names), N, Ds)
    for i, m in enumerate(names):
        rows, zm = shared[m]
        z[i, rows] = zm
    return z, data.avail.clone()


def latent_alignment(model, train, test, n_train: int | None = 10_000, seed: int = 0, ks=KS,
                     batch_size: int | None = 20_000, device=None) -> dict:
    """Modality gap, retrieval recall@k (test split) and canonical correlations (fit on n_train training tuples,
    scored on the test split) of every modality pair, from the unimodal shared posterior means.

    -> {"modality_gap": {"m0+m1": gap}, "retrieval": {"recall@1": {"m0->m1": r}, ..., "chance": {...},
    "n": {"m0->m1": N}, "mean": {"recall@1": r}}, "cca": {"correlations": {"m0+m1": [rho]}, "mean": {...}, ...}}"""
    names = list(model.names)
    if len(names) < 2:
        return {"skipped": "alignment needs at least two modalities"}
    dev = torch.device(device) if device is not None else module_device(model)
    tr = as_eval_data(train, names, n=n_train, seed=seed)
    te = as_eval_data(test, names)
    z_te, ok_te = unimodal_means(model, te, batch_size)  # [M, N, Ds], [N, M]
    z_tr, ok_tr = unimodal_means(model, tr, batch_size)
    gap, corr, cca_n = {}, {}, {}
    rec: dict = {f"recall@{k}": {} for k in ks} | {"chance": {f"recall@{k}": {} for k in ks}, "n": {}}
    for i, j in itertools.combinations(range(len(names)), 2):
        pair, both = f"{names[i]}+{names[j]}", ok_te[:, i] & ok_te[:, j]  # [N]
        a, b = z_te[i, both], z_te[j, both]  # [N_ij, Ds]
        if len(a) >= 2:
            gap[pair] = modality_gap(a, b)
            r = retrieval_recall(a.to(dev), b.to(dev), ks)
            for key, q, g in (("a->b", i, j), ("b->a", j, i)):
                od = f"{names[q]}->{names[g]}"
                rec["n"][od] = len(a)
                for k in ks:
                    rec[f"recall@{k}"][od] = r[key][k]
                    rec["chance"][f"recall@{k}"][od] = min(k, len(a)) / len(a)
        both_tr = ok_tr[:, i] & ok_tr[:, j]
        if int(both_tr.sum()) >= 2 and len(a) >= 2:
            corr[pair] = canonical_correlations(z_tr[i, both_tr].numpy(), z_tr[j, both_tr].numpy(), a.numpy(),
                                                b.numpy()).tolist()
            cca_n[pair] = {"train": int(both_tr.sum()), "test": len(a)}
    rec["mean"] = {f"recall@{k}": _mean(rec[f"recall@{k}"].values()) for k in ks}
    rec["mean_chance"] = {f"recall@{k}": _mean(rec["chance"][f"recall@{k}"].values()) for k in ks}
    means = {p: _mean(c) for p, c in corr.items()}
    return {"embedding": "mean of q(z | x_m), each modality alone",
            "modality_gap": gap, "modality_gap_mean": _mean(gap.values()),
            "retrieval": {"similarity": "cosine", **rec},
            "cca": {"fit": "train split", "scored": "test split", "ridge": RIDGE, "correlations": corr,
                    "mean": means, "mean_all": _mean(means.values()), "n": cca_n},
            "n_train": len(tr), "n_test": len(te)}


def _mean(values) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else float("nan")
