"""Command line of the benchmark runner: pick cases, run them, print and write the results."""

import argparse
import sys
from dataclasses import asdict, replace

import torch

from gated_kernels.backends import BACKENDS
from gated_kernels.bench import measure, peers, report
from gated_kernels.bench.suites import CELL_MODULES, CELLS, DTYPES, MODES, SUITES, Case, suite


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage dump, no traceback
        sys.stderr.write(f"gated-kernels-bench: error: {message}\n")
        sys.exit(2)


def sizes(names):
    """An argparse type for comma-separated positive sizes, e.g. sizes("T,B,I,H")."""
    count = len(names.split(","))

    def parse(text):
        try:
            values = tuple(int(v) for v in text.split(","))
        except ValueError:
            values = ()
        if len(values) != count:
            raise argparse.ArgumentTypeError(
                f"expected {names} ({count} integers), got {text!r}")
        if min(values) <= 0:
            raise argparse.ArgumentTypeError(f"{names} must all be positive, got {text!r}")
        return values

    return parse


def _positive(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def parse_args(argv):
    p = _Parser(prog="gated-kernels-bench",
                description="Correctness-gated speed of gated_kernels against torch.nn.")
    p.add_argument("--suite", choices=SUITES, default="quick")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto: cuda when a GPU is present, else cpu")
    p.add_argument("--cell", choices=CELLS + CELL_MODULES, help="only this cell")
    p.add_argument("--mode", choices=MODES, help="fwd: inference under no_grad; fwdbwd: training step")
    p.add_argument("--dtype", choices=tuple(DTYPES), help="replace the suite's dtypes")
    p.add_argument("--layers", type=_positive, help="replace the number of layers")
    p.add_argument("--bidirectional", action="store_true", help="make every case bidirectional")
    p.add_argument("--shape", type=sizes("T,B,I,H"), action="append", metavar="T,B,I,H",
                   help="custom shapes instead of the suite's (repeatable)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="gated_kernels backend under test; other than auto, the auto choice is "
                        "timed next to it where it differs")
    p.add_argument("--only-auto", choices=("triton", "torch", "cpp"),
                   help="with a forced --backend: only the cases where `auto` picks this one")
    p.add_argument("--threads", type=_positive, help="torch.set_num_threads")
    p.add_argument("--min-seconds", type=float, default=1.0,
                   help="timed runs per case: at least this long per implementation")
    p.add_argument("--json", metavar="PATH")
    p.add_argument("--markdown", metavar="PATH")
    p.add_argument("--plot", metavar="PATH", help="PNG of speedup against H (needs matplotlib)")
    args = p.parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.only_auto and args.backend == "auto":
        p.error("--only-auto needs a forced --backend (the `auto` choice is recorded beside it)")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda was requested but no CUDA GPU is available")
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            p.error("--plot needs matplotlib: pip install 'gated-kernels[bench]'")
    return args


def select_cases(args):
    cases = suite(args.suite, args.device)
    if args.shape:
        dtype = args.dtype or "fp32"
        # A shape of one step (T=1) runs the cells too.
        cases = [Case(cell, mode, T, B, I, H, dtype, device=args.device)
                 for T, B, I, H in args.shape
                 for cell in CELLS + (CELL_MODULES if T == 1 else ()) for mode in MODES]
    changes = {k: v for k, v in (("dtype", args.dtype), ("layers", args.layers)) if v}
    if args.bidirectional:
        changes["bidirectional"] = True
    cases = [replace(c, **changes) for c in cases]
    cases = [c for c in cases if (args.cell in (None, c.cell)) and (args.mode in (None, c.mode))]
    return list(dict.fromkeys(cases))  # overrides can make cases equal


MEASURED = [f"{n}_{k}" for n in ("ours", "torch") for k in
            ("median_s", "gpu_median_s", "p20_s", "p80_s", "runs", "peak_bytes", "out_error",
             "grad_error")] + ["gpu_speedup"]
AUTO = ["auto_backend", "auto_median_s", "auto_speedup"]


def run_case(case, prov, gates, backend="auto", ours_factory=None, min_seconds=1.0,
             only_auto=None):
    """One record: the gate (shared by the fwd and fwdbwd case of a shape), then, if it
    passed, interleaved timing and peak memory of gated_kernels and torch.nn. A case that cannot
    run at all (say, a dtype one side does not support on this device) is recorded as ERROR with
    the reason, and the run goes on. With `only_auto`, None for a case whose `auto` choice is
    another backend. On a GPU, gpu_speedup compares the GPU's work alone (measure._Timer)."""
    record = {"case": case.name, **asdict(case), **prov, "gate": "ERROR", "error": None,
              "speedup": None, "backend": None, **dict.fromkeys(MEASURED + AUTO)}
    try:
        theirs = measure.torch_module(case)
        make_ours = ours_factory or measure.ours_module
        ours = make_ours(theirs, backend=backend)
        args = measure.make_input(case)
        record["backend"] = measure.backend_of(case, ours, args)
        auto = None
        if backend != "auto":  # what `auto` would run here, timed too where it differs
            auto = make_ours(theirs, backend="auto")
            record["auto_backend"] = measure.backend_of(case, auto, args)
            if record["auto_backend"] == record["backend"]:
                auto = None
        if only_auto and not (record["auto_backend"] or "").startswith(only_auto):
            return None
        key = case.shape_key()
        if key not in gates:
            gates[key] = measure.gate(case, theirs, ours, args)
        record.update(gates[key])
        record["gate"] = "PASS" if measure.gate_passed(case, gates[key]) else "FAIL"
        if record["gate"] == "FAIL":
            return record
        with measure.loop_region(case):
            steps = {"ours": measure.step_fn(case, ours, args),
                     "torch": measure.step_fn(case, theirs, args)}
            if auto is not None:
                steps["auto"] = measure.step_fn(case, auto, args)
            if case.lengths:  # ours on the same batch with every row of length T
                record["fill"] = measure.fill_ratio(args)
                steps["full"] = measure.step_fn(case, ours, measure.full_length_args(case, args))
            record["peers"], record["peer_errors"] = {}, {}
            for name, factory in peers.available(case).items():
                try:
                    steps[name] = measure.step_fn(case, factory(case), args)
                except Exception as error:  # noqa: BLE001 - a peer that cannot run this case
                    record["peer_errors"][name] = f"{type(error).__name__}: {error}"
            timing = measure.time_interleaved(steps, case.device, min_seconds=min_seconds)
            if backend != "auto":
                record["auto_median_s"] = timing.pop("auto", timing["ours"])["median"]
                record["auto_speedup"] = timing["torch"]["median"] / record["auto_median_s"]
            if case.lengths:
                record["ours_full_median_s"] = timing.pop("full")["median"]
                # 1.0: time in proportion to the real lengths; above: what the padded batch costs
                # beyond the running rows' share.
                record["proportionality"] = timing["ours"]["median"] / (
                    record["fill"] * record["ours_full_median_s"])
            for name in set(steps) - {"ours", "torch", "auto", "full"}:
                record["peers"][name] = timing.pop(name)["median"]
            for name, t in timing.items():
                record.update({f"{name}_median_s": t["median"], f"{name}_p20_s": t["p20"],
                               f"{name}_p80_s": t["p80"], f"{name}_runs": t["runs"],
                               f"{name}_peak_bytes": measure.peak_memory_bytes(steps[name],
                                                                               case.device)})
                record[f"{name}_gpu_median_s"] = t.get("gpu_median")
        record["speedup"] = timing["torch"]["median"] / timing["ours"]["median"]
        if "gpu_median" in timing["ours"]:
            record["gpu_speedup"] = timing["torch"]["gpu_median"] / timing["ours"]["gpu_median"]
    except Exception as error:  # noqa: BLE001 - reported in the record, the suite goes on
        record.update(gate="ERROR", speedup=None, error=f"{type(error).__name__}: {error}")
    return record


def _progress(items):
    try:
        from tqdm import tqdm
    except ImportError:  # the bench extra brings tqdm; without it, no bar
        return items
    # disable=None: no bar when stderr is not a terminal (CI logs, redirected runs).
    return tqdm(items, unit="case", leave=False, file=sys.stderr, disable=None)


def _write(args, name, records, prov):
    if args.json:
        report.write_json(args.json, records)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(report.markdown(name, records, prov))


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = select_cases(args)
    if not cases:
        _Parser().error("no case matches the options")
    prov = report.provenance(args.device)
    name = "custom" if args.shape else args.suite
    print(f"suite {name}: {len(cases)} cases on {report.header(prov)}", flush=True)
    gates, records = {}, []
    for case in _progress(cases):
        record = run_case(case, prov, gates, args.backend, min_seconds=args.min_seconds,
                          only_auto=args.only_auto)
        if record is None:
            continue
        records.append(record)
        _write(args, name, records, prov)  # after every case: a run cut short keeps its cases
    print(report.table(records))
    for r in records:
        if r["error"]:
            print(f"ERROR {r['case']}: {r['error']}")
    print(report.summary(name, records))
    if args.plot:
        report.plot(args.plot, name, records, prov)
    return records
