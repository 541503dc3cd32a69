"""What one step's grid barrier and one kernel launch cost on this GPU: the fixed cost a
persistent kernel pays per step (reference/gpu_large_batch.md puts ours near 4 us on an H200)
against what one launch a step pays.

    python -m gated_kernels.bench.barrier [--json PATH]

One program per SM (a cooperative grid, as the persistent kernels launch), `steps` barriers in
one launch, one zeroed counter per step as in the kernels; timed with CUDA events:
- rmw: the wait spins on an atomic add of 0 (common.grid_barrier, what the kernels run);
- acquire: the wait polls with a plain acquire load (ld.acquire.gpu; Triton 3.6 has no
  tl.atomic_load), no read-modify-write traffic on the counter's line;
- split: rmw, with 32 KB of stores per program between the arrive and the wait (a step's
  y / gates / c stores, overlapping the wait);
- launch: one empty kernel launch inside a CUDA graph of 256 (the floor of one launch a step).
"""

import argparse
import json

import torch
import triton
import triton.language as tl

from gated_kernels.triton_kernels import common

STEPS = 2000
SPLIT_BYTES = 32 * 1024


@triton.jit
def _load_acquire(ptr):
    return tl.inline_asm_elementwise("ld.acquire.gpu.global.b32 $0, [$1];", "=r,l", [ptr],
                                     dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def _barrier_kernel(counter_ptr, sink_ptr, steps, MODE: tl.constexpr, STORES: tl.constexpr):
    """`steps` grid barriers; with STORES, STORES fp32 values per program stored between the
    arrive and the wait."""
    pid = tl.program_id(0)
    offs = tl.arange(0, 1024)
    for s in range(steps):
        counter = counter_ptr + s
        expected = tl.num_programs(0)
        tl.debug_barrier()
        tl.atomic_add(counter, 1, sem="release", scope="gpu")
        for k in tl.static_range(STORES // 1024):
            tl.store(sink_ptr + (pid * STORES + k * 1024) + offs, s.to(tl.float32))
        if MODE == "acquire":
            arrived = _load_acquire(counter)
            while arrived < expected:
                arrived = _load_acquire(counter)
        else:
            arrived = tl.atomic_add(counter, 0, sem="acquire", scope="gpu")
            while arrived < expected:
                arrived = tl.atomic_add(counter, 0, sem="acquire", scope="gpu")
        tl.debug_barrier()


@triton.jit
def _empty_kernel(ptr):
    pass


def _time(fn, repeats=5):
    """Median seconds of fn() over `repeats` runs, after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def barrier_us(mode, programs, steps=STEPS):
    """Microseconds per barrier step of `programs` co-resident programs."""
    stores = SPLIT_BYTES // 4 if mode == "split" else 0
    sink = torch.empty(max(1, programs * stores), device="cuda")
    options = common.persistent_options()

    def run():
        counters = torch.zeros(steps, dtype=torch.int32, device="cuda")
        _barrier_kernel[(programs,)](counters, sink, steps,
                                     MODE="acquire" if mode == "acquire" else "rmw",
                                     STORES=stores, num_warps=4, **options)

    return _time(run) / steps * 1e6


def launch_us(launches=256):
    """Microseconds per empty launch, replayed from a CUDA graph."""
    x = torch.empty(1, device="cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        _empty_kernel[(1,)](x)  # compile outside the capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            for _ in range(launches):
                _empty_kernel[(1,)](x)
    return _time(graph.replay) / launches * 1e6


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gated_kernels.bench.barrier")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    results = {"gpu": torch.cuda.get_device_name(), "sms": sms, "steps": STEPS}
    for programs in sorted({128, sms}):
        for mode in ("rmw", "acquire", "split"):
            results[f"{mode}_{programs}_us"] = barrier_us(mode, programs)
    results["launch_us"] = launch_us()
    print(f"barrier cost on {results['gpu']} ({sms} SMs), {STEPS} steps a launch:")
    for key, value in results.items():
        if key.endswith("_us"):
            print(f"  {key:16s} {value:7.2f} us")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
