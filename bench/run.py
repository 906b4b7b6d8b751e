"""The bench in one run: training-step ratios vs `independent` (always) and vs MultiVae (where it is installed), in
the conv regime (PolyDigits images) and the MLP regime (32-d synthetic vectors, MLP 2x256, latent 16, Adam, one
torch thread), and the peak memory of a MoPoE step against `independent`'s. Writes bench/results.json.

    python bench/run.py --quick      # under 2 minutes on 2 CPU cores (smaller batches for the MultiVae tables)
    python bench/run.py              # batch 256 (MLP) everywhere, more rounds and steps (~10-15 min on 2 cores)

Ratios are measured in this one process, interleaved (see presets_step_time.py and bench_multivae.py); nothing
here is a pass/fail threshold. The issue-9 targets are printed beside the numbers they concern.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_multivae as bmv  # noqa: E402
import presets_step_time as pst  # noqa: E402

import mmvae  # noqa: E402
from mmvae.datasets import PolyDigits  # noqa: E402
from mmvae.models.presets import default_modalities  # noqa: E402


def settings(quick: bool) -> dict:
    """Sizes and step counts of a run: --quick keeps the whole run under 2 minutes on 2 CPU cores."""
    if quick:
        return dict(B=256, B_multivae=64, M_presets=(5, 8), rounds=2, steps=1, conv_size=16, conv_B=32,
                    mv_rounds=2, mv_steps=1, mv_loss_reps=1, K_Ms=(3, 5))
    return dict(B=256, B_multivae=256, M_presets=(5, 8), rounds=5, steps=3, conv_size=28, conv_B=64,
                mv_rounds=3, mv_steps=2, mv_loss_reps=2, K_Ms=(3, 5))


# ------------------------------------------------------------------------------------------------ vs independent
def mlp_presets(M: int, cfg: dict, device) -> dict:
    """ELBO presets vs `independent`, MLP regime, M modalities (and, in a full run at M <= 5, the K-sample presets
    at their default K=5, against `independent` decoding the same rows)."""
    x, avail = pst.synthetic_batch(M, cfg["B"])
    batch = ({k: v.to(device) for k, v in x.items()}, avail.to(device))
    names = list(pst.ELBO_ROWS) + ([] if cfg["quick"] or M > 5 else list(pst.K_SAMPLE_ROWS))  # K=5 presets: M=5
    return pst.preset_times(names, lambda priv: pst.mlp_modalities(M, private=priv), batch, cfg["rounds"],
                            cfg["steps"], device)


def conv_presets(cfg: dict, device) -> dict:
    """ELBO presets vs `independent` on PolyDigits (5 modalities, conv networks)."""
    data = PolyDigits("train", num_modalities=5, n_tuples=cfg["conv_B"], size=cfg["conv_size"])
    x, avail, _ = next(data.batches(cfg["conv_B"]))
    batch = ({k: v.to(device) for k, v in x.items()}, avail.to(device))
    return pst.preset_times(list(pst.ELBO_ROWS), lambda priv: default_modalities(data), batch, cfg["rounds"],
                            cfg["steps"], device)


def peak_memory(preset: str, M: int, B: int, device) -> float | None:
    """Peak step memory (MiB above resting) of a preset, MLP regime, in a fresh subprocess (see stepmem.py)."""
    spec = json.dumps({"preset": preset, "M": M, "batch": B, "device": str(device)})
    out = subprocess.run([sys.executable, str(HERE / "stepmem.py"), spec], capture_output=True, text=True,
                         env={"OMP_NUM_THREADS": "1", **__import__("os").environ})
    if out.returncode:
        print(f"  memory of {preset}: failed ({out.stderr.strip().splitlines()[-1:]})", flush=True)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


# ------------------------------------------------------------------------------------------------ vs MultiVae
def multivae_case(kinds, M: int, net: str, cfg: dict, device, K: int = 1, loss: str = "iwae") -> list[dict]:
    """bench_multivae.compare for each model kind at M modalities: MLP regime (32-d synthetic) or conv."""
    quick = cfg["quick"]
    argv = ["--modalities", str(M), "--K", str(K), "--loss", loss, "--rounds", str(cfg["mv_rounds"]),
            "--steps", str(cfg["mv_steps"]), "--warmup", "1", "--loss-reps", str(cfg["mv_loss_reps"]),
            "--n-batches", "2"]
    if net == "mlp":
        argv += ["--net", "mlp", "--data", "synthetic", "--dim", "32", "--latent", "16", "--n", "1024"]
        B = cfg["B_multivae"]
    else:
        argv += ["--size", str(cfg["conv_size"]), "--n", "512" if quick else "2048"]
        B = cfg["conv_B"]
    args = bmv.parse_args(argv)
    bmv.fill_defaults(args, device)
    data, labels, _ = bmv.make_data(args)
    names = list(data)
    shape = tuple(data[names[0]].shape[1:])
    out = []
    for kind in kinds:
        nets = bmv.make_networks(names, shape, args.latent, args.private_dim if kind == "mmvaeplus" else 0,
                                 args.seed, args.net)
        r, _ = bmv.compare(kind, nets, shape, data, labels, B, args, device)
        r.update(net=net, modalities=M, K=K if kind in ("mmvae", "mmvaeplus") else None,
                 loss=loss if kind in ("mmvae", "mmvaeplus") else "elbo")
        out.append(r)
        print(f"  MultiVae {net} {kind:<10} M={M} {r['loss']:<5} K={r['K']} B={B:<4} ratio {r['time_ratio']:.2f} "
              f"({1e3 * r['step_s']['mmvae']:.0f} vs {1e3 * r['step_s']['multivae']:.0f} ms)", flush=True)
    return out


def multivae_table(rows: list[dict]) -> str:
    """| regime | model | M | K | B | mmvae ms | MultiVae ms | ratio (range) | dec calls | dec rows |"""
    lines = ["| regime | model | M | K, loss | B | mmvae ms | MultiVae ms | mmvae / MultiVae (range) | "
             "networks alone / MultiVae | dec calls mmvae/MultiVae | dec rows |",
             "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        c = r["calls"]
        lo, hi = r["time_ratio_range"]
        est = f"{r['K']}, {r['loss']}" if r["K"] else r["loss"]
        lines.append(f"| {r['net']} | {r['model']} | {r['modalities']} | {est} | {r['batch_size']} | "
                     f"{1e3 * r['step_s']['mmvae']:.0f} | {1e3 * r['step_s']['multivae']:.0f} | "
                     f"{r['time_ratio']:.2f} ({lo:.2f}-{hi:.2f}) | {r['floor_ratio']:.2f} | "
                     f"{c['mmvae']['decoder_calls']}/{c['multivae']['decoder_calls']} | "
                     f"{c['mmvae']['decoder_rows']}/{c['multivae']['decoder_rows']} |")
    return "\n".join(lines)


def multivae_runs(cfg: dict, device) -> list[dict]:
    """The MultiVae comparisons: K-sample DReG (MLP), MoPoE at M=8 (MLP), and the conv models."""
    rows = []
    for M in cfg["K_Ms"]:
        rows += multivae_case(["mmvae", "mmvaeplus"], M, "mlp", cfg, device, K=10, loss="dreg")
    rows += multivae_case(["mopoe"], 8, "mlp", {**cfg, "B_multivae": 256}, device)
    rows += multivae_case(["mopoe", "mmvae"] if cfg["quick"] else list(bmv.MODELS), 5, "conv", cfg, device)
    return rows


# ------------------------------------------------------------------------------------------------ targets
def targets(mlp: dict, memory: dict, mv: list[dict]) -> list[str]:
    """The issue-9 targets against this run's numbers, one line each."""
    out = []
    for M, bound in ((5, 1.15), (8, 1.25)):
        worst = max(((n, d["vs_matched"]) for n, d in mlp[M].items() if n in pst.ELBO_ROWS), key=lambda t: t[1])
        out.append(f"ELBO presets at M={M}: worst {worst[0]} {worst[1]:.2f}x independent (same rows) "
                   f"[target <= {bound}] {'holds' if worst[1] <= bound else 'MISSED'}")
    if memory.get("ratio") is not None:
        out.append(f"MoPoE M=8 peak step memory: {memory['mopoe']:.1f} vs {memory['independent']:.1f} MiB = "
                   f"{memory['ratio']:.2f}x independent [target <= 1.3] "
                   f"{'holds' if memory['ratio'] <= 1.3 else 'MISSED'}")
    for r in mv:
        if r["K"] == 10:
            out.append(f"{r['model']} DReG K=10 M={r['modalities']} B={r['batch_size']}: {r['time_ratio']:.2f}x "
                       f"MultiVae [target <= 0.7] {'holds' if r['time_ratio'] <= 0.7 else 'MISSED'} "
                       f"(the networks alone on the same rows: {r['floor_ratio']:.2f}x MultiVae, so no step "
                       f"running them can do better; mmvae's step is {r['overhead']:.2f}x its networks')")
        elif r["model"] == "mopoe" and r["net"] == "mlp":
            out.append(f"MoPoE M=8 (MLP): MultiVae / mmvae = {1 / r['time_ratio']:.1f}x [target >= 25] "
                       f"{'holds' if 1 / r['time_ratio'] >= 25 else 'MISSED'}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller MultiVae batches and fewer rounds: < 2 min")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-multivae", action="store_true", help="skip the MultiVae tables even where installed")
    p.add_argument("--out", default=str(HERE / "results.json"))
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else torch.device(args.device)
    if args.threads and device.type == "cpu":
        torch.set_num_threads(args.threads)
    cfg = {**settings(args.quick), "quick": args.quick}
    t0 = time.perf_counter()
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or
                                                                                  platform.machine())
    print(f"mmvae {mmvae.__version__} | torch {torch.__version__} | {device} ({machine}), "
          f"{torch.get_num_threads()} threads | {'quick' if args.quick else 'full'} run", flush=True)
    mlp = {}
    for M in cfg["M_presets"]:
        mlp[M] = mlp_presets(M, cfg, device)
        print(pst.markdown_table(mlp[M], f"\nMLP regime, {M} modalities, batch {cfg['B']}: step time vs independent"),
              flush=True)
    conv = conv_presets(cfg, device)
    print(pst.markdown_table(conv, f"\nConv regime (PolyDigits {cfg['conv_size']}x{cfg['conv_size']}, 5 modalities, "
                                   f"batch {cfg['conv_B']}): step time vs independent"), flush=True)
    memory = {n: peak_memory(n, 8, cfg["B"], device) for n in ("independent", "mopoe")}
    memory["ratio"] = memory["mopoe"] / memory["independent"] if memory["mopoe"] and memory["independent"] else None
    print(f"\npeak step memory (MLP, M=8, batch {cfg['B']}, "
          f"{'CUDA max allocated' if device.type == 'cuda' else 'CPU peak RSS above resting, subprocess each'}): "
          f"independent {memory['independent']} MiB, mopoe {memory['mopoe']} MiB", flush=True)
    mv = []
    if bmv.MULTIVAE_ERROR is not None:
        print(f"\nMultiVae tables skipped: multivae not importable ({bmv.MULTIVAE_ERROR}); see bench/README.md")
    elif not args.no_multivae:
        print(f"\nvs MultiVae {bmv.MULTIVAE_VERSION} (same networks and batches, interleaved):", flush=True)
        mv = multivae_runs(cfg, device)
        print("\n" + multivae_table(mv))
    lines = targets(mlp, memory, mv)
    print("\nissue 9 targets:\n  " + "\n  ".join(lines))
    report = {"device": str(device), "machine": machine, "torch": torch.__version__, "mmvae": mmvae.__version__,
              "multivae": bmv.MULTIVAE_VERSION if bmv.MULTIVAE_ERROR is None else None,
              "threads": torch.get_num_threads(), "python": platform.python_version(), "settings": cfg,
              "mlp_vs_independent": {str(M): t for M, t in mlp.items()}, "conv_vs_independent": conv,
              "memory_mib": memory, "vs_multivae": mv, "targets": lines, "wall_s": time.perf_counter() - t0}
    Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    print(f"\nwrote {args.out} ({report['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
