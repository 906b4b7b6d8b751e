"""Latent classification: a linear probe (multinomial logistic regression) on posterior means.

The probe minimises scikit-learn's LogisticRegression objective with its default C = 1:
    C * sum_i CE(W x_i + b, y_i) + 1/2 ||W||^2   (intercept not penalised),
by full-batch L-BFGS in torch, so it runs on whatever device the features are on.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..devices import module_device
from .subset_batches import as_eval_data, gather_rows, row_chunks, subset_key, subset_rows, subsets_by_size


def fit_logistic(x: Tensor, y: Tensor, num_classes: int | None = None, C: float = 1.0, max_iter: int = 500,
                 tol: float = 1e-4, weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Weights W [P, D, K] and intercepts b [P, K] of P independent problems, each minimising
    C * sum_i CE(W x_i + b, y_i) + ||W||^2 / 2 (scaled by 1/(C n_p) inside, which keeps its optimum).

    x [P, N, D] (or [N, D]: one problem, and W [D, K], b [K] back), y [P, N]; weight [P, N] in {0, 1} marks the rows
    of each problem (padding rows get 0). The sum of the P objectives is minimised at once by L-BFGS: its optimum is
    every problem's own optimum, and one batched matmul per step serves all of them.
    """
    single = x.dim() == 2
    if single:
        x, y = x[None], y[None]
        weight = None if weight is None else weight[None]
    K = num_classes or int(y.max()) + 1
    dtype = torch.float64 if x.device.type == "cpu" else torch.float32
    x, y = x.to(dtype), y.long()
    P, N, D = x.shape
    weight = torch.ones(P, N, dtype=dtype, device=x.device) if weight is None else weight.to(dtype)
    n = weight.sum(1).clamp_min(1.0)  # [P]
    W = torch.zeros(P, D, K, dtype=dtype, device=x.device, requires_grad=True)
    b = torch.zeros(P, 1, K, dtype=dtype, device=x.device, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1.0, max_iter=max_iter, tolerance_grad=tol, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")
    yy = y.clamp_min(0)

    def closure():
        opt.zero_grad()
        logits = torch.baddbmm(b, x, W)  # [P, N, K]
        ce = F.cross_entropy(logits.reshape(P * N, K), yy.reshape(-1), reduction="none").view(P, N)
        loss = ((ce * weight).sum(1) / n + 0.5 / (C * n) * W.pow(2).sum((1, 2))).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    W, b = W.detach(), b.detach()[:, 0]
    return (W[0], b[0]) if single else (W, b)


def _standardize(train_x: Tensor, test_x: Tensor, weight: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Scale features by the training rows' mean and std (weighted by weight [P, N] when given).  [P, N, D]"""
    w = torch.ones(train_x.shape[:-1], dtype=train_x.dtype, device=train_x.device) if weight is None else \
        weight.to(train_x.dtype)
    n = w.sum(-1, keepdim=True).clamp_min(1.0)[..., None]  # [P, 1, 1]
    mu = (train_x * w[..., None]).sum(-2, keepdim=True) / n
    sd = (((train_x - mu) ** 2 * w[..., None]).sum(-2, keepdim=True) / n).sqrt().clamp_min(1e-8)
    return (train_x - mu) / sd, (test_x - mu) / sd


def linear_probe(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, C: float = 1.0,
                 max_iter: int = 500, num_classes: int | None = None, standardize: bool = False) -> float:
    """Test accuracy of L2-regularised multinomial logistic regression fit on (train_x [N, D], train_y [N]).

    standardize: scale features by the training mean and std first."""
    if standardize:
        train_x, test_x = _standardize(train_x, test_x)
    K = num_classes or int(max(train_y.max(), test_y.max())) + 1
    W, b = fit_logistic(train_x, train_y, K, C, max_iter)
    pred = (test_x.to(W.dtype) @ W + b).argmax(-1)
    return float((pred == test_y.to(pred.device)).double().mean())


def linear_probes(train: list[tuple[Tensor, Tensor]], test: list[tuple[Tensor, Tensor]], num_classes: int,
                  C: float = 1.0, max_iter: int = 500, standardize: bool = True, device=None) -> list[float]:
    """Many linear probes fit in one batched L-BFGS: train[p] = (x [N_p, D_p], y [N_p]), test[p] likewise.
    Problems are zero-padded to a common [N, D] (zero feature columns get zero weights, padded rows weight 0)."""
    if not train:
        return []
    dev = torch.device(device) if device is not None else train[0][0].device

    def stack(pairs):
        N, D = max(len(y) for _, y in pairs), max(x.shape[1] for x, _ in pairs)
        X = torch.zeros(len(pairs), N, D, device=dev)
        Y = torch.zeros(len(pairs), N, dtype=torch.long, device=dev)
        Wt = torch.zeros(len(pairs), N, device=dev)
        for p, (x, y) in enumerate(pairs):
            X[p, :len(y), :x.shape[1]] = x.to(dev)
            Y[p, :len(y)] = y.to(dev)
            Wt[p, :len(y)] = 1.0
        return X, Y, Wt

    Xtr, Ytr, Wtr = stack(train)
    Xte, Yte, Wte = stack(test)
    if standardize:
        Xtr, Xte = _standardize(Xtr, Xte, Wtr)
    W, b = fit_logistic(Xtr, Ytr, num_classes, C, max_iter, weight=Wtr)
    pred = (torch.bmm(Xte.to(W.dtype), W) + b[:, None]).argmax(-1)  # [P, N]
    hits = ((pred == Yte).to(W.dtype) * Wte).sum(1) / Wte.sum(1).clamp_min(1.0)
    return hits.tolist()


@torch.no_grad()
def _experts_all(model, data, batch_size: int | None):
    """Every tuple encoded once with what it observed: (mu, logvar) [M, N, Ds] and private means name -> [N, Dm]."""
    dev = module_device(model)
    mus, lvs, priv = [], [], {}
    for c in row_chunks(len(data), batch_size):
        x, avail = model.check(gather_rows(data.data, torch.arange(c.start, c.stop), dev), data.avail[c].to(dev))
        enc = model.encode(x, avail)
        mus.append(enc.experts.mu)
        lvs.append(enc.experts.logvar)
        for m, (mu, _) in enc.private.items():
            priv.setdefault(m, []).append(mu.float().cpu())
    return torch.cat(mus, 1), torch.cat(lvs, 1), {m: torch.cat(v) for m, v in priv.items()}


@torch.no_grad()
def subset_embeddings(model, data, sizes=None, batch_size: int | None = 20_000) -> dict:
    """Posterior means of the shared latent for every subset S (rows where S is observed), and each modality's
    private mean from its own encoding.  -> {"shared": {"m0+m1": (rows [R], z [R, Ds])}, "private": {"m0": ...}}

    A model with `encode` and `aggregator` encodes each tuple once and aggregates the experts of every subset (the
    same numbers as `embed(x[rows], avail=subset)`, without encoding a tuple once per subset); anything else is
    asked through `embed`.
    """
    names, dev = list(model.names), module_device(model)
    fast = hasattr(model, "encode") and hasattr(model, "aggregator") and hasattr(model, "check")
    if fast:
        from ..gaussian import Experts

        mu_all, lv_all, priv_all = _experts_all(model, data, batch_size)
    out = {"shared": {}, "private": {}}
    for size, subsets in subsets_by_size(len(names), sizes).items():
        rows, sub = subset_rows(data.avail, subsets)
        feats, priv = [], {}
        for c in row_chunks(len(rows), batch_size):
            r, k = rows[c], sub[c]
            mask = subsets[k].to(dev)
            if fast:
                rd = r.to(dev)
                z = model.aggregator(Experts(mu_all[:, rd], lv_all[:, rd], mask)).mean()
                emb = {"shared": z, "private": {m: v[r] for m, v in priv_all.items()}}
            else:
                emb = model.embed(gather_rows(data.data, r, dev), avail=mask)
            feats.append(emb["shared"].float().cpu())
            for m, v in emb.get("private", {}).items():
                priv.setdefault(m, []).append(v.float().cpu())
        feats = torch.cat(feats) if feats else torch.zeros(0)
        priv = {m: torch.cat(v) for m, v in priv.items()}
        for k, s in enumerate(subsets):
            sel = sub == k
            out["shared"][subset_key(s, names)] = (rows[sel], feats[sel])
            if size == 1:  # a modality's private code, from its own encoding
                m = names[int(s.nonzero())]
                if m in priv:
                    out["private"][m] = (rows[sel], priv[m][sel])
    return out


def latent_classification(model, train, test, n_train: int | None = 10_000, seed: int = 0, C: float = 1.0,
                          max_iter: int = 500, standardize: bool = True, batch_size: int | None = 20_000,
                          device=None) -> dict:
    """Linear-probe accuracy of the class label from each subset's shared posterior mean (and from each
    modality's private mean), trained on n_train training tuples (None: all), scored on the test set.

    -> {"subsets": {"m0+m1": acc}, "private": {"m0": acc}, "per_size": {"1": mean}, "mean", "n_train", "n_test"}
    """
    names = list(model.names)
    tr = as_eval_data(train, names, n=n_train, seed=seed)
    te = as_eval_data(test, names)
    if tr.labels is None or te.labels is None:
        raise ValueError("latent classification needs class labels in both the training and the test data")
    dev = torch.device(device) if device is not None else module_device(model)
    K = tr.num_classes or int(max(tr.labels.max(), te.labels.max())) + 1
    emb_tr, emb_te = subset_embeddings(model, tr, batch_size=batch_size), subset_embeddings(model, te,
                                                                                            batch_size=batch_size)
    keys, train_sets, test_sets = [], [], []
    for kind in ("shared", "private"):
        for key, (r_tr, f_tr) in emb_tr[kind].items():
            if key not in emb_te[kind]:
                continue
            r_te, f_te = emb_te[kind][key]
            ok_tr, ok_te = tr.labels[r_tr] >= 0, te.labels[r_te] >= 0
            if bool(ok_tr.any()) and bool(ok_te.any()):
                keys.append((kind, key))
                train_sets.append((f_tr[ok_tr], tr.labels[r_tr][ok_tr]))
                test_sets.append((f_te[ok_te], te.labels[r_te][ok_te]))
    accs = linear_probes(train_sets, test_sets, K, C, max_iter, standardize, dev)
    result = {"subsets": {}, "private": {}}
    for (kind, key), acc in zip(keys, accs):
        result["subsets" if kind == "shared" else "private"][key] = acc
    by_size: dict[str, list[float]] = {}
    for key, acc in result["subsets"].items():
        by_size.setdefault(str(key.count("+") + 1), []).append(acc)
    result["per_size"] = {s: sum(v) / len(v) for s, v in by_size.items()}
    vals = list(result["subsets"].values())
    result["mean"] = sum(vals) / len(vals) if vals else float("nan")
    result.update(n_train=len(tr), n_test=len(te), C=C, standardize=standardize)
    return result
