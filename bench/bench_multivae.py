"""mmvae against MultiVae (PyPI `multivae`) on the same networks, data and batches, in one process.

Both libraries get byte-identical encoders and decoders (one set of mmvae ConvEncoder/ConvDecoder modules, deep-copied
and wrapped in MultiVae's BaseEncoder/BaseDecoder), the same Laplace(scale 0.75) likelihood, the same initial
weights, the same batches and the same Adam settings. Reported are RATIOS mmvae / MultiVae (time of a training step,
peak memory of a step), never absolute pass/fail thresholds, plus the encoder/decoder calls each library makes per
step and the loss of both at the same initialisation.

    python bench/bench_multivae.py            # default: 28x28 PolyDigits, batch 128 and 256 (~5 min on 2 CPU cores)
    python bench/bench_multivae.py --quick    # 16x16, batch 64, fewer steps (~1 min on CPU)
    python bench/bench_multivae.py --net mlp --data synthetic --dim 32 --latent 16   # the MLP regime

`bench/run.py` calls `compare` from here for its MultiVae tables.

Needs `multivae` next to mmvae (see bench/README.md). The device is CUDA when present, else CPU (`--device`).
"""
from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stepmem import CPUPeak, step_peak_mib  # noqa: E402

import mmvae
from mmvae import Modality, MultimodalVAE
from mmvae.aggregators import MoPoE as MoPoEAggregator
from mmvae.aggregators import PoE
from mmvae.networks import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from mmvae.objectives import OBJECTIVES

try:
    import multivae
    from multivae.data.datasets.base import MultimodalBaseDataset
    from multivae.models import MMVAE, MVAE, MMVAEConfig, MMVAEPlus, MMVAEPlusConfig, MoPoE, MoPoEConfig, MVAEConfig
    from multivae.models.nn import BaseMultilatentEncoder
    from pythae.models.base.base_utils import ModelOutput as PythaeOutput
    from pythae.models.nn.base_architectures import BaseDecoder

    MULTIVAE_ERROR = None
except ImportError as err:  # run.py still runs its mmvae-only tables; main() below exits
    MULTIVAE_ERROR = f"{type(err).__name__}: {err}"
    BaseMultilatentEncoder = BaseDecoder = nn.Module

MODELS = ("mopoe", "mvae", "mmvae", "mmvaeplus")
try:
    MULTIVAE_VERSION = importlib.metadata.version("multivae")
except importlib.metadata.PackageNotFoundError:
    MULTIVAE_VERSION = getattr(multivae, "__version__", "unknown") if MULTIVAE_ERROR is None else None
LAPLACE_SCALE = 0.75


# ------------------------------------------------------------------------------------------------ data
def synthetic_vectors(M: int, n: int, dim: int, seed: int) -> tuple[dict[str, Tensor], Tensor]:
    """M modalities [N, dim] sharing one 8-d factor: x_m = A_m h + 0.1 noise, h ~ N(0, I). -> (data, labels)"""
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, 8, generator=g)
    data = {f"m{m}": h @ torch.randn(8, dim, generator=g) / 8 ** 0.5 + 0.1 * torch.randn(n, dim, generator=g)
            for m in range(M)}
    return data, (h[:, 0] > 0).long()


def make_data(args) -> tuple[dict[str, Tensor], Tensor, str]:
    """M image modalities [N, 3, S, S] in [0, 1]: PolyDigits (no download) or uniform noise; or, with
    --data synthetic, M vectors [N, dim] (the MLP regime). -> (data, labels, what)"""
    if args.data == "synthetic":
        data, labels = synthetic_vectors(args.modalities, args.n, args.dim, args.seed)
        return data, labels, f"synthetic {args.dim}-d"
    if args.data == "polydigits":
        try:
            from mmvae.datasets import PolyDigits

            ds = PolyDigits("train", num_modalities=args.modalities, seed=args.seed, size=args.size, n_tuples=args.n)
            return {n: ds.data[n].float().contiguous() for n in ds.modalities}, ds.targets, "PolyDigits"
        except ImportError as err:  # scikit-learn missing: fall back to noise
            print(f"PolyDigits unavailable ({err}); using random data", file=sys.stderr)
    g = torch.Generator().manual_seed(args.seed)
    data = {f"m{m}": torch.rand(args.n, 3, args.size, args.size, generator=g) for m in range(args.modalities)}
    return data, torch.randint(0, 10, (args.n,), generator=g), "uniform random"


def make_batches(data: dict[str, Tensor], labels: Tensor, batch_size: int, count: int, device) -> list:
    """`count` distinct batches (cycled if the data run out), already on the device. -> [(x, labels)]"""
    n = next(iter(data.values())).shape[0]
    out = []
    for b in range(count):
        idx = (torch.arange(batch_size) + b * batch_size) % n
        out.append(({k: v[idx].to(device) for k, v in data.items()}, labels[idx].to(device)))
    return out


# ------------------------------------------------------------------------------------------------ networks
class WrappedEncoder(BaseMultilatentEncoder):
    """MultiVae view of an mmvae encoder whose output is [mu_shared, mu_private, logvar_shared, logvar_private]."""

    def __init__(self, net: nn.Module, shared_dim: int, private_dim: int):
        super().__init__()
        self.net, self.latent_dim, self.style_dim = net, shared_dim, private_dim

    def forward(self, x: Tensor) -> PythaeOutput:
        mu, lv = self.net(x).chunk(2, dim=-1)  # [B, Ds + Dp] each, the split mmvae's Modality.encode makes
        d = self.latent_dim
        if self.style_dim == 0:
            return PythaeOutput(embedding=mu, log_covariance=lv)
        return PythaeOutput(embedding=mu[:, :d], log_covariance=lv[:, :d],
                            style_embedding=mu[:, d:], style_log_covariance=lv[:, d:])


class WrappedDecoder(BaseDecoder):
    """MultiVae view of an mmvae decoder: z [B, D] -> ModelOutput(reconstruction=[B, C, H, W])."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, z: Tensor) -> PythaeOutput:
        return PythaeOutput(reconstruction=self.net(z))


def make_networks(names: list[str], shape, shared_dim: int, private_dim: int, seed: int, net: str = "conv") -> dict:
    """One (encoder, decoder) pair per modality, seeded; each library gets its own deep copy. net="conv" for
    images, "mlp" (2 x 256 hidden) for vectors."""
    torch.manual_seed(seed)
    d = shared_dim + private_dim
    if net == "mlp":
        return {n: (MLPEncoder(shape, 2 * d), MLPDecoder(d, shape)) for n in names}
    return {n: (ConvEncoder(shape, 2 * d), ConvDecoder(d, shape, sigmoid=True)) for n in names}


# ------------------------------------------------------------------------------------------------ model pairs
@dataclass
class Pair:
    """The same model in both libraries, with how to run one step of each."""

    name: str
    ours: nn.Module
    theirs: nn.Module
    theirs_per_batch_sum: bool  # MultiVae's loss is summed over the batch (MMVAE, MMVAE+): divide by B to compare
    notes: list[str] = field(default_factory=list)

    def modules(self, lib: str, part: str) -> list[nn.Module]:
        """The raw networks (encoders or decoders) of one library, for call counting."""
        if lib == "mmvae":
            return [getattr(m, part) for m in self.ours.modalities.values()]
        nets = self.theirs.encoders if part == "encoder" else self.theirs.decoders
        return [w.net for w in nets.values()]


def build_pair(kind: str, nets: dict, shape, args) -> Pair:
    names = list(nets)
    M, Ds = len(names), args.latent
    Dp = args.private_dim if kind == "mmvaeplus" else 0
    ours_nets, theirs_nets = copy.deepcopy(nets), copy.deepcopy(nets)
    mods = {n: Modality(e, d, likelihood={"name": "laplace", "scale": LAPLACE_SCALE}, shape=shape)
            for n, (e, d) in ours_nets.items()}
    encoders = {n: WrappedEncoder(e, Ds, Dp) for n, (e, _) in theirs_nets.items()}
    decoders = {n: WrappedDecoder(d) for n, (_, d) in theirs_nets.items()}
    common = dict(n_modalities=M, latent_dim=Ds, input_dims={n: tuple(shape) for n in names},
                  decoders_dist=dict.fromkeys(names, "laplace"),
                  decoder_dist_params={n: {"scale": LAPLACE_SCALE} for n in names})
    iw_name, mv_loss = ("dreg", "dreg_looser") if args.loss == "dreg" else ("iwae", "iwae_looser")
    if kind == "mopoe":
        ours = MultimodalVAE(mods, Ds, aggregator=MoPoEAggregator(prior_expert=False), objective="elbo")
        theirs = MoPoE(MoPoEConfig(**common, beta=1.0), encoders, decoders)
        notes = ["MultiVae adds a N(0,I) prior expert to the full subset only; mmvae MoPoE uses none",
                 "subset per sample: mmvae draws one at random, MultiVae splits the batch into 31 fixed blocks"]
        return Pair(kind, ours, theirs, False, notes)
    if kind == "mvae":
        ours = MultimodalVAE(mods, Ds, aggregator=PoE(prior_expert=True, subsets="joint+unimodal"), objective="elbo")
        theirs = MVAE(MVAEConfig(**common, use_subsampling=True, k=0, warmup=0, beta=1.0), encoders, decoders)
        notes = ["same objective: joint ELBO + M unimodal ELBOs, each decoding only its own modalities",
                 "MultiVae re-runs every encoder for every subset (2M encoder calls); mmvae encodes once"]
        return Pair(kind, ours, theirs, False, notes)
    if kind == "mmvae":
        ours = MultimodalVAE(mods, Ds, aggregator="moe", objective={"name": iw_name, "K": args.K})
        theirs = MMVAE(MMVAEConfig(**common, K=args.K, prior_and_posterior_dist="normal", learn_prior=False,
                                   beta=1.0, loss=mv_loss), encoders, decoders)
        notes = [f"same estimator: stratified {iw_name.upper()} K={args.K}, Gaussian posteriors, fixed N(0,I) prior",
                 "MultiVae decodes M x M (encoder, decoder) pairs; mmvae batches all M subsets per decoder"]
        return Pair(kind, ours, theirs, True, notes)
    if kind == "mmvaeplus":
        ours = MultimodalVAE(mods, Ds, private_dim=Dp, aggregator="moe", cross_private="prior",
                             learn_private_prior=True, objective={"name": iw_name, "K": args.K})
        theirs = MMVAEPlus(MMVAEPlusConfig(**common, K=args.K, prior_and_posterior_dist="normal",
                                           learn_shared_prior=False, learn_modality_prior=True,
                                           modalities_specific_dim=Dp, beta=1.0, loss=mv_loss), encoders, decoders)
        notes = [f"same estimator: stratified {iw_name.upper()} K={args.K}; private codes from a learned-scale prior "
                 "for cross reconstructions", "MultiVae decodes M x M pairs; mmvae batches all M subsets per decoder"]
        return Pair(kind, ours, theirs, True, notes)
    raise ValueError(f"unknown model {kind!r}; choose from {MODELS}")


class NetworksOnly(nn.Module):
    """The floor of a step: the same networks on the same rows with no objective around them. Encoders on B rows;
    each decoder on r x B codes mu + sigma * eps (r = mmvae's decoded rows / (M B); for r = M K: K draws from each
    of the M encoders, for r = 1: the first encoder's codes); the loss is
    the mean absolute error (Laplace up to constants). No library running these networks on these rows can take
    less time than this step."""

    def __init__(self, nets: dict, r: int):
        super().__init__()
        self.encoders = nn.ModuleList(e for e, _ in nets.values())
        self.decoders = nn.ModuleList(d for _, d in nets.values())
        self.r = r

    def forward(self, x: dict[str, Tensor], avail: Tensor):
        xs = list(x.values())
        mu, lv = zip(*(e(v).chunk(2, -1) for e, v in zip(self.encoders, xs)))  # M x [B, D]
        mu, lv = torch.stack(mu), torch.stack(lv)  # [M, B, D]
        reps = -(-self.r // len(xs))  # ceil(r / M)
        z = mu + (0.5 * lv).exp() * torch.randn(reps, *mu.shape, device=mu.device)  # [reps, M, B, D]
        z = z.reshape(-1, mu.shape[-1])[: self.r * mu.shape[1]]  # [r B, D]
        loss = sum((d(z).view(-1, *v.shape) - v).abs().mean() for d, v in zip(self.decoders, xs))
        return SimpleNamespace(loss=loss)


# ------------------------------------------------------------------------------------------------ one step
class Runner:
    """One training step (forward, backward, Adam) of one library's model on a list of batches."""

    def __init__(self, lib: str, model: nn.Module, batches: list, lr: float, per_batch_sum: bool):
        self.lib, self.model, self.batches = lib, model, batches
        self.opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
        self.per_batch_sum = per_batch_sum
        self.i = 0
        self.last_losses: list[Tensor] = []  # per-sample losses of the steps since the last reset

    def inputs(self, b: int):
        x, y = self.batches[b % len(self.batches)]
        if self.lib == "mmvae":
            B = y.shape[0]
            return (x, torch.ones(B, len(x), dtype=torch.bool, device=y.device))
        return (MultimodalBaseDataset(data=dict(x), labels=y),)

    def loss(self, b: int) -> Tensor:
        """The loss per sample (MultiVae's batch sums divided by B)."""
        out = self.model(*self.inputs(b))
        B = self.batches[b % len(self.batches)][1].shape[0]
        return out.loss / B if self.per_batch_sum else out.loss

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        B = self.batches[self.i % len(self.batches)][1].shape[0]
        loss = self.model(*self.inputs(self.i)).loss
        loss.backward()
        self.opt.step()
        self.i += 1
        self.last_losses.append((loss.detach() / B) if self.per_batch_sum else loss.detach())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(runner: Runner, steps: int, device) -> float:
    """Mean seconds per step over `steps` consecutive steps."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        runner.step()
    sync(device)
    return (time.perf_counter() - t0) / steps


class CallCounter:
    """Forward hooks counting calls and rows (samples) through a set of modules."""

    def __init__(self, modules: list[nn.Module]):
        self.calls = self.rows = 0
        self.handles = [m.register_forward_hook(self.hook) for m in modules]

    def hook(self, module, args, output):
        self.calls += 1
        self.rows += args[0].shape[0]

    def remove(self):
        for h in self.handles:
            h.remove()


def count_calls(pair: Pair, runner: Runner) -> dict:
    """Encoder/decoder calls and rows in one forward pass."""
    enc = CallCounter(pair.modules(runner.lib, "encoder"))
    dec = CallCounter(pair.modules(runner.lib, "decoder"))
    try:
        runner.loss(0)
    finally:
        enc.remove()
        dec.remove()
    return {"encoder_calls": enc.calls, "encoder_rows": enc.rows, "decoder_calls": dec.calls, "decoder_rows": dec.rows}


def mean_loss(runner: Runner, reps: int, seed: int) -> float:
    """Loss per sample averaged over `reps` forward passes on batch 0 (grad mode on: DReG registers hooks)."""
    torch.manual_seed(seed)
    return statistics.fmean(float(runner.loss(0).detach()) for _ in range(reps))


# ------------------------------------------------------------------------------------------------ memory
# CPUPeak and step_peak_mib live in stepmem.py (shared with run.py's per-subprocess measurement)


# ------------------------------------------------------------------------------------------------ one comparison
def compare(kind: str, nets: dict, shape, data, labels, batch_size: int, args, device) -> tuple[dict, dict]:
    """Loss check, call counts and interleaved step timings of one model at one batch size. -> (result, runners)"""
    pair = build_pair(kind, nets, shape, args)
    pair.ours.to(device)
    pair.theirs.to(device)
    batches = make_batches(data, labels, batch_size, args.n_batches, device)
    runners = {"mmvae": Runner("mmvae", pair.ours, batches, args.lr, False),
               "multivae": Runner("multivae", pair.theirs, batches, args.lr, pair.theirs_per_batch_sum)}
    res = {"model": kind, "batch_size": batch_size, "notes": pair.notes,
           "params": {lib: sum(p.numel() for p in r.model.parameters() if p.requires_grad)
                      for lib, r in runners.items()}}
    # identical weights at init -> the same loss in expectation where the objectives agree
    res["init_loss"] = {lib: mean_loss(r, args.loss_reps, args.seed) for lib, r in runners.items()}
    res["calls"] = {lib: count_calls(pair, r) for lib, r in runners.items()}
    B, M = batch_size, len(nets)
    r = max(1, round(res["calls"]["mmvae"]["decoder_rows"] / (M * B)))
    runners["networks"] = Runner("mmvae", NetworksOnly(copy.deepcopy(nets), r).to(device), batches, args.lr, False)
    for r in runners.values():  # warm-up: allocator, cuDNN autotune, Adam state
        for _ in range(args.warmup):
            r.step()
    per_round = {lib: [] for lib in runners}
    for k in range(args.rounds):  # interleaved, the order alternating between rounds
        order = ["mmvae", "multivae"] if k % 2 == 0 else ["multivae", "mmvae"]
        for lib in [*order, "networks"]:
            runners[lib].last_losses.clear()
            per_round[lib].append(timed(runners[lib], args.steps, device))
    res["step_s"] = {lib: statistics.median(v) for lib, v in per_round.items()}
    res["step_s_rounds"] = per_round
    ratios = [a / b for a, b in zip(per_round["mmvae"], per_round["multivae"])]
    res["time_ratio"] = res["step_s"]["mmvae"] / res["step_s"]["multivae"]
    res["time_ratio_range"] = [min(ratios), max(ratios)]
    res["floor_ratio"] = res["step_s"]["networks"] / res["step_s"]["multivae"]  # the least time_ratio possible
    res["overhead"] = res["step_s"]["mmvae"] / res["step_s"]["networks"]  # mmvae's step over its networks' alone
    # both saw the same batches for the same number of steps: the last round's training losses should agree too
    res["trained_loss"] = {lib: float(torch.stack(r.last_losses).mean()) for lib, r in runners.items()
                           if lib != "networks"}
    res["trained_steps"] = args.warmup + args.rounds * args.steps
    return res, runners


def measure_memory(res: dict, runners: dict, device, cpu_peak: CPUPeak | None, reps: int) -> None:
    """Peak step memory of both libraries into `res` (run after all timings: the CPU method changes malloc)."""
    peaks = {}
    if device.type == "cuda" or cpu_peak is not None:
        for lib in ("mmvae", "multivae"):
            peaks[lib] = statistics.median(step_peak_mib(runners[lib].step, device, cpu_peak) for _ in range(reps))
    res["peak_mib"] = peaks or None
    res["memory_ratio"] = peaks["mmvae"] / peaks["multivae"] if peaks and peaks["multivae"] else None


# ------------------------------------------------------------------------------------------------ report
def table(results: list[dict], memory_kind: str) -> str:
    head = (f"{'model':<10} {'B':>4} {'time ratio':>10} {'(range)':>13} {'mmvae ms':>9} {'MultiVae ms':>11} "
            f"{'mem ratio':>9} {'dec calls':>9} {'dec rows':>13} {'enc calls':>9} {'init loss mmvae/multivae':>26}")
    lines = [head, "-" * len(head)]
    for r in results:
        c, il = r["calls"], r["init_loss"]
        mem = f"{r['memory_ratio']:.2f}" if r["memory_ratio"] is not None else "n/a"
        lines.append(
            f"{r['model']:<10} {r['batch_size']:>4} {r['time_ratio']:>10.2f} "
            f"{'[{:.2f},{:.2f}]'.format(*r['time_ratio_range'][:2]):>13} "
            f"{1e3 * r['step_s']['mmvae']:>9.1f} {1e3 * r['step_s']['multivae']:>11.1f} {mem:>9} "
            f"{str(c['mmvae']['decoder_calls']) + '/' + str(c['multivae']['decoder_calls']):>9} "
            f"{str(c['mmvae']['decoder_rows']) + '/' + str(c['multivae']['decoder_rows']):>13} "
            f"{str(c['mmvae']['encoder_calls']) + '/' + str(c['multivae']['encoder_calls']):>9} "
            f"{format(il['mmvae'], '.1f') + ' / ' + format(il['multivae'], '.1f'):>26}")
    lines.append("time ratio = median step time mmvae / MultiVae (range over interleaved rounds); "
                 f"mem ratio = peak step memory mmvae / MultiVae ({memory_kind}); x/y = mmvae/MultiVae")
    return "\n".join(lines)


def loss_warnings(results: list[dict], tol: float) -> list[str]:
    out = []
    for r in results:
        for when in ("init_loss", "trained_loss"):
            a, b = r[when]["mmvae"], r[when]["multivae"]
            rel = abs(a - b) / max(abs(b), 1e-12)
            if rel > tol:
                out.append(f"{r['model']} B={r['batch_size']}: {when} differs by {100 * rel:.1f}% "
                           f"(mmvae {a:.2f}, MultiVae {b:.2f})")
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help=f"comma list from {MODELS}")
    p.add_argument("--batch-sizes", default="128,256", help="comma list")
    p.add_argument("--size", type=int, default=28, help="image side (divisible by 4)")
    p.add_argument("--modalities", type=int, default=5)
    p.add_argument("--n", type=int, default=2048, help="number of tuples")
    p.add_argument("--data", choices=("polydigits", "random", "synthetic"), default="polydigits",
                   help="synthetic: vectors of --dim (use with --net mlp)")
    p.add_argument("--net", choices=("conv", "mlp"), default="conv", help="conv for images, mlp (2 x 256) for vectors")
    p.add_argument("--dim", type=int, default=32, help="vector size of --data synthetic")
    p.add_argument("--latent", type=int, default=32, help="shared latent size")
    p.add_argument("--private-dim", type=int, default=16, help="private latent size (mmvaeplus)")
    p.add_argument("--K", type=int, default=1, help="importance samples (mmvae, mmvaeplus)")
    p.add_argument("--loss", choices=("iwae", "dreg"), default="iwae", help="mmvae/mmvaeplus estimator")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, help="untimed steps per library (default: CPU 1, CUDA 5)")
    p.add_argument("--rounds", type=int, help="interleaved timing rounds (default: CPU 3, CUDA 6)")
    p.add_argument("--steps", type=int, help="steps per library per round (default: CPU 2, CUDA 10)")
    p.add_argument("--mem-reps", type=int, help="steps measured for peak memory, median (default: CPU 1, CUDA 3)")
    p.add_argument("--n-batches", type=int, default=4, help="distinct batches cycled through")
    p.add_argument("--loss-reps", type=int, help="forward passes averaged for the init loss (default: CPU 4, CUDA 16)")
    p.add_argument("--loss-tol", type=float, default=0.10, help="relative loss difference reported as a warning")
    p.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (0: torch's default); 1 keeps CPU timings steady on a shared machine")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cpu-memory", action="store_true", help="skip the approximate CPU peak-RSS measurement")
    p.add_argument("--out", default=str(Path(__file__).with_name("results.json")))
    p.add_argument("--quick", action="store_true", help="16x16 images, batch 64, fewer steps")
    return p.parse_args(argv)


def fill_defaults(args, device: torch.device) -> None:
    """Step counts that keep the default CPU run near 5 minutes and give steadier medians on a GPU."""
    cuda = device.type == "cuda"
    if args.quick:
        args.size, args.n, args.batch_sizes = 16, 512, "64"
    for name, cpu, gpu in (("warmup", 1, 5), ("rounds", 3, 6), ("steps", 2, 10), ("mem_reps", 1, 3),
                           ("loss_reps", 4, 16)):
        if getattr(args, name) is None:
            setattr(args, name, gpu if cuda else cpu)


def main(argv=None) -> int:
    if MULTIVAE_ERROR is not None:
        sys.exit(f"bench_multivae needs the `multivae` package ({MULTIVAE_ERROR}); see bench/README.md")
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else torch.device(args.device)
    fill_defaults(args, device)
    if args.threads and device.type == "cpu":
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:
        if m not in MODELS:
            sys.exit(f"unknown model {m!r}; choose from {MODELS}")
    if args.loss not in OBJECTIVES:
        sys.exit(f"this mmvae has no {args.loss!r} objective (has {sorted(OBJECTIVES)})")
    data, labels, what = make_data(args)
    names = list(data)
    shape = tuple(data[names[0]].shape[1:])
    print(f"mmvae {mmvae.__version__} vs multivae {MULTIVAE_VERSION}"
          f" | torch {torch.__version__} | {device} | {what} {len(names)} x {list(shape)}, N={args.n}"
          f" | latent {args.latent}", flush=True)
    results, pending = [], []
    t_start = time.perf_counter()
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        for kind in models:
            nets = make_networks(names, shape, args.latent, args.private_dim if kind == "mmvaeplus" else 0, args.seed,
                                 args.net)
            r, runners = compare(kind, nets, shape, data, labels, bs, args, device)
            results.append(r)
            pending.append((r, runners))
            print(f"  {kind:<10} B={bs:<4} time ratio {r['time_ratio']:.2f}  "
                  f"({1e3 * r['step_s']['mmvae']:.1f} vs {1e3 * r['step_s']['multivae']:.1f} ms)", flush=True)
    cpu_peak = CPUPeak() if device.type == "cpu" and not args.no_cpu_memory else None
    for r, runners in pending:
        measure_memory(r, runners, device, cpu_peak, args.mem_reps)
    del pending
    memory_kind = {"cuda": "torch.cuda.max_memory_allocated above resting"}.get(
        device.type, "peak RSS above resting, approximate" if not args.no_cpu_memory else "not measured")
    print()
    print(table(results, memory_kind))
    warns = loss_warnings(results, args.loss_tol)
    print("\nloss check (per sample, same init, averaged over "
          f"{args.loss_reps} draws): " + ("all within " f"{100 * args.loss_tol:.0f}%" if not warns else ""))
    for w in warns:
        print("  WARNING " + w)
    for kind in models:
        notes = next(r["notes"] for r in results if r["model"] == kind)
        print(f"{kind}: " + "; ".join(notes))
    report = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__, "python": platform.python_version(), "mmvae": mmvae.__version__,
        "multivae": MULTIVAE_VERSION, "threads": torch.get_num_threads(),
        "data": what, "net": args.net, "modalities": len(names), "shape": list(shape), "n": args.n,
        "latent": args.latent,
        "private_dim": args.private_dim, "K": args.K, "loss": args.loss, "likelihood": f"laplace({LAPLACE_SCALE})",
        "batch_sizes": [int(b) for b in args.batch_sizes.split(",")],
        "timing": {"warmup": args.warmup, "rounds": args.rounds, "steps": args.steps, "mem_reps": args.mem_reps,
                   "loss_reps": args.loss_reps, "n_batches": args.n_batches, "lr": args.lr},
        "memory": memory_kind, "wall_s": time.perf_counter() - t_start, "loss_warnings": warns, "results": results,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    print(f"\nwrote {args.out} ({report['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
