"""What a run reports: provenance, the terminal table, markdown, JSON and the plot."""

import datetime
import importlib.metadata
import json
import math
import os
import platform
import subprocess

import torch

import gated_kernels
from gated_kernels import cpu
from gated_kernels.bench.suites import ZONEOUT_RATE

COLUMNS = ("case", "gate", "ours ms", "torch ms", "speedup", "ours err", "torch err",
           "ours MB", "torch MB")


def _version(package):
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git_commit():
    source = os.path.dirname(os.path.dirname(os.path.abspath(gated_kernels.__file__)))
    try:
        out = subprocess.run(["git", "-C", source, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def provenance(device):
    """The machine and versions of a run. On the CPU also what the kernels run with there
    (gated_kernels.cpu.config: vendor, instruction set, L2 size, product kernels)."""
    cuda = device.startswith("cuda")
    return {
        "machine": torch.cuda.get_device_name() if cuda else cpu.model(),
        "device": device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "gated_kernels": gated_kernels.__version__,
        "git_commit": _git_commit(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        **({} if cuda else cpu.config()),
    }


def header(prov):
    line = (f"{prov['machine']} ({prov['device']}, {prov['threads']} threads); "
            f"torch {prov['torch']}, triton {prov['triton']}, cudnn {prov['cudnn']}; "
            f"gated_kernels {prov['gated_kernels']} ({prov['git_commit']}); {prov['timestamp']}")
    if "cpu_vendor" in prov:
        line += f"\nCPU kernels: {cpu.summary(prov)}"
    return line


def _ms(seconds):
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


def _mb(nbytes):
    return "-" if nbytes is None else f"{nbytes / 2**20:.1f}"


def _err(value):
    return "-" if value is None else f"{value:.1e}"


def peer_names(records):
    return sorted({name for r in records for name in (r.get("peers") or {})})


def has_auto(records):
    """Whether the run forced a backend, so the `auto` choice was recorded next to it."""
    return any(r.get("auto_backend") for r in records)


def has_gpu_time(records):
    """Whether the GPU's work alone was timed too (on CUDA: measure._Timer.gpu_time)."""
    return any(r.get("gpu_speedup") for r in records)


def has_lengths(records):
    """Whether the cases ran PackedSequence inputs (the `packed` suite)."""
    return any(r.get("fill") for r in records)


def columns(records):
    gpu = ("gpu speedup",) if has_gpu_time(records) else ()
    gpu += ("fill", "vs fill") if has_lengths(records) else ()
    auto = ("backend", "auto", "auto speedup") if has_auto(records) else ()
    return COLUMNS + gpu + auto + tuple(f"{name} ms" for name in peer_names(records))


def row(record, peer_columns=(), auto=False, gpu=False, lengths=False):
    """One table row; a case that failed the gate (or could not run) shows no speedup. With
    `gpu`, the speedup of the GPU's work alone; with `lengths`, the fill ratio and our time
    against fill x our time with every row of length T; with `auto`, the backend timed (and its
    Triton paths), what `auto` runs and its speedup; peer medians follow, where a peer ran."""
    passed = record["gate"] == "PASS"
    speedup = f"{record['speedup']:.2f}x" if passed else "-"
    error_key = "grad_error" if record["mode"] == "fwdbwd" else "out_error"
    extra = ()
    if gpu:
        gpu_speedup = record.get("gpu_speedup")
        extra = (f"{gpu_speedup:.2f}x" if passed and gpu_speedup else "-",)
    if lengths:
        ratio = record.get("proportionality")
        extra += (f"{record['fill']:.2f}" if record.get("fill") else "-",
                  f"{ratio:.2f}x" if passed and ratio else "-")
    if auto:
        auto_speedup = record.get("auto_speedup")
        extra += (record.get("backend") or "-", record.get("auto_backend") or "-",
                 f"{auto_speedup:.2f}x" if passed and auto_speedup else "-")
    return (record["case"], record["gate"], _ms(record["ours_median_s"]),
            _ms(record["torch_median_s"]), speedup, _err(record["ours_" + error_key]),
            _err(record["torch_" + error_key]), _mb(record["ours_peak_bytes"]),
            _mb(record["torch_peak_bytes"]), *extra,
            *(_ms((record.get("peers") or {}).get(name)) for name in peer_columns))


def table(records):
    names = peer_names(records)
    head = columns(records)
    rows = [head] + [row(r, names, has_auto(records), has_gpu_time(records), has_lengths(records))
                     for r in records]
    widths = [max(len(r[k]) for r in rows) for k in range(len(head))]
    lines = ["  ".join(c.ljust(w) if k == 0 else c.rjust(w) for k, (c, w) in
                       enumerate(zip(r, widths))) for r in rows]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def _geomean(values):
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def summary(suite, records):
    """One line: cases, gate failures, geometric-mean speedup per mode, the range; per dtype
    when the suite has several."""
    passed = [r for r in records if r["gate"] == "PASS"]
    failed = sum(r["gate"] == "FAIL" for r in records)
    errors = sum(r["gate"] == "ERROR" for r in records)
    parts = [f"{suite}: {len(records)} cases, {failed} failed the gate"
             + (f", {errors} could not run" if errors else "")]
    dtypes = sorted({r["dtype"] for r in passed})
    for dtype in dtypes:
        for mode in ("fwd", "fwdbwd"):
            speedups = [r["speedup"] for r in passed if r["mode"] == mode and r["dtype"] == dtype]
            if speedups:
                name = f"{dtype} {mode}" if len(dtypes) > 1 else mode
                parts.append(f"{name} speedup geomean {_geomean(speedups):.2f}x "
                             f"(min {min(speedups):.2f}x, max {max(speedups):.2f}x)")
    plain = [r["ours_median_s"] / r["peers"]["plain"] for r in passed
             if (r.get("peers") or {}).get("plain")]
    if plain:
        parts.append(f"time / our plain LSTM or GRU's {min(plain):.2f}x-{max(plain):.2f}x "
                     f"(geomean {_geomean(plain):.2f}x)")
    ratios = [r["proportionality"] for r in passed if r.get("proportionality")]
    if ratios:
        parts.append(f"time / (fill x time at full length) {min(ratios):.2f}x-{max(ratios):.2f}x")
    gpus = [r["gpu_speedup"] for r in passed if r.get("gpu_speedup")]
    if gpus:
        parts.append(f"GPU work alone: geomean {_geomean(gpus):.2f}x (min {min(gpus):.2f}x)")
    autos = [r["auto_speedup"] for r in passed if r.get("auto_speedup")]
    if autos:
        parts.append(f"backend auto: geomean {_geomean(autos):.2f}x (min {min(autos):.2f}x), "
                     f"torch.nn's code at {sum(r['auto_backend'] == 'torch' for r in passed)} "
                     f"of {len(autos)} cases")
    return "; ".join(parts)


def markdown(suite, records, prov):
    lines = [f"# gated_kernels benchmark: suite `{suite}`", "",
             f"Machine: {header(prov)}".replace("\n", "\n\n"), "",
             f"Summary: {summary(suite, records)}", "",
             "Times are medians (20th-80th percentile in the JSON) of interleaved runs in one "
             "process; speedup = torch.nn time / gated_kernels time; errors are the largest "
             "relative error against a float64 reference (gradients for fwdbwd, outputs for "
             "fwd), the median over three inputs; MB is peak memory allocated during one call."
             + (" With a backend forced, `backend` is what was timed as ours (and its Triton "
                "forward/backward paths), `auto` what backend='auto' runs, timed in the same "
                "interleaved runs where it differs." if has_auto(records) else "")
             + (" Each call starts on an idle GPU, so its time is the larger of its kernels' "
                "and its launches' time; `gpu speedup` compares the kernels' time alone, each "
                "call queued behind a GPU sleep longer than its launches (as in a model whose "
                "other layers keep the GPU busy)." if has_gpu_time(records) else "")
             + (" The inputs are PackedSequences of rows of different lengths: `fill` is "
                "sum(lengths) / (T B), `vs fill` our time over fill x our time on the same batch "
                "with every row of length T (1.00x: time in proportion to the real lengths)."
                if has_lengths(records) else "")
             + (" The LayerNorm and zoneout cells have no torch.nn module: their `torch` "
                "column times the same cells as a Python loop of torch ops "
                f"(gated_kernels/bench/loops.py; zoneout's rate {ZONEOUT_RATE}, its masks drawn "
                "in training mode as ours); `plain ms` is our LSTM / GRU at the same shape without them, "
                "timed in the same runs."
                if any(r["cell"].startswith(("LayerNorm", "Zoneout")) for r in records)
                else ""), "",
             "| " + " | ".join(columns(records)) + " |", "|" + "---|" * len(columns(records))]
    lines += ["| " + " | ".join(row(r, peer_names(records), has_auto(records),
                                    has_gpu_time(records), has_lengths(records))) + " |"
              for r in records]
    return "\n".join(lines) + "\n"


def write_json(path, records):
    with open(path, "w") as f:
        json.dump(records, f, indent=1)


def plot(path, suite, records, prov):
    """Speedup against H, one line per batch size (and line style per T), one panel per cell and
    mode. Cases that failed the gate are left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    simple = [r for r in records if r["gate"] == "PASS" and r["layers"] == 1
              and not r["bidirectional"]]
    panels = sorted({(r["cell"], r["dtype"]) for r in simple}) or [("LSTM", "fp32")]
    modes = ("fwd", "fwdbwd")
    fig, axes = plt.subplots(len(panels), 2, figsize=(11, 3.8 * len(panels)), squeeze=False)
    styles = ["-", "--", ":", "-."]
    for i, (cell, dtype) in enumerate(panels):
        for j, mode in enumerate(modes):
            ax = axes[i][j]
            points = [r for r in simple if r["cell"] == cell and r["dtype"] == dtype
                      and r["mode"] == mode]
            Ts = sorted({r["T"] for r in points})
            for b_index, B in enumerate(sorted({r["B"] for r in points})):
                for t_index, T in enumerate(Ts):
                    line = sorted((r["H"], r["speedup"]) for r in points
                                  if r["B"] == B and r["T"] == T)
                    ax.plot([h for h, _ in line], [s for _, s in line], marker="o",
                            linestyle=styles[t_index % len(styles)], color=f"C{b_index}",
                            label=f"B={B}, T={T}")
            ax.axhline(1.0, color="gray", linewidth=0.8)
            ax.set_xscale("log", base=2)
            Hs = sorted({r["H"] for r in points})
            ax.set_xticks(Hs, [str(h) for h in Hs])
            ax.minorticks_off()
            ax.set_xlabel("hidden size H")
            ax.set_ylabel("speedup vs torch.nn")
            ax.set_title(f"{cell} {dtype} {'inference' if mode == 'fwd' else 'training step'}")
            if points:
                ax.legend(fontsize=7)
    fig.suptitle(f"gated_kernels suite '{suite}': {prov['machine']}, {prov['threads']} threads, "
                 f"torch {prov['torch']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
