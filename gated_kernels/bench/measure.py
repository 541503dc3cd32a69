"""Measuring one case: the correctness gate, interleaved timing, peak memory."""

import contextlib
import os
import statistics
import time

import torch

import gated_kernels
from gated_kernels.bench.suites import DTYPES
from gated_kernels.tolerance import allowed_error, max_rel_error



@contextlib.contextmanager
def _quiet_stderr():
    """Kineto prints profiler start/stop lines straight to file descriptor 2, through the
    progress bar; send them to /dev/null while the profiler runs."""
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def torch_module(case, seed=0):
    """The torch.nn module of a case, with a fixed seed (so every implementation gets the same
    weights)."""
    torch.manual_seed(seed)
    return getattr(torch.nn, case.cell)(
        case.I, case.H, num_layers=case.layers, bidirectional=case.bidirectional,
        device=case.device, dtype=DTYPES[case.dtype])


def ours_module(theirs, backend="auto"):
    """gated_kernels' module with torch.nn's weights: the default implementation under test."""
    return getattr(gated_kernels, type(theirs).__name__).from_torch(theirs, backend=backend)


def make_input(case, seed=1):
    g = torch.Generator(device=case.device).manual_seed(seed)
    return torch.randn(case.T, case.B, case.I, generator=g, device=case.device,
                       dtype=DTYPES[case.dtype])


def _outputs(out):
    y, state = out
    return [y, *(state if isinstance(state, tuple) else (state,))]


def _run_with_grads(module, x, seed=2):
    """Outputs and the gradients (input, then every parameter) of sum(outputs * fixed random
    weights)."""
    x = x.detach().requires_grad_()
    outs = _outputs(module(x))
    g = torch.Generator(device=x.device).manual_seed(seed)
    # Drawn in float64 and cast, so every dtype gets the same upstream gradient.
    weights = [torch.randn(o.shape, generator=g, device=o.device, dtype=torch.float64).to(o.dtype)
               for o in outs]
    grads = torch.autograd.grad(outs, [x, *module.parameters()], weights)
    return [o.detach() for o in outs], grads


def gate(case, theirs, ours, x):
    """Errors of ours and of torch.nn against a float64 reference on the same inputs, and
    whether ours is within the allowed error (gated_kernels.tolerance), for outputs and for
    gradients. The reference is gated_kernels' pure-PyTorch backend in float64."""
    reference = ours_module(theirs, backend="reference").double()
    ref_outs, ref_grads = _run_with_grads(reference, x.double())
    result = {}
    for name, module in (("ours", ours), ("torch", theirs)):
        outs, grads = _run_with_grads(module, x)
        result[f"{name}_out_error"] = max(map(max_rel_error, outs, ref_outs))
        result[f"{name}_grad_error"] = max(map(max_rel_error, grads, ref_grads))
    dtype = DTYPES[case.dtype]
    result["allowed_out_error"] = allowed_error(dtype, "out", result["torch_out_error"])
    result["allowed_grad_error"] = allowed_error(dtype, "grad", result["torch_grad_error"])
    return result


def gate_passed(case, errors):
    ok = errors["ours_out_error"] <= errors["allowed_out_error"]
    if case.mode == "fwdbwd":
        ok = ok and errors["ours_grad_error"] <= errors["allowed_grad_error"]
    return ok


def step_fn(case, module, x):
    """One timed call: inference under no_grad, or a training step (forward, backward with a
    fixed upstream gradient, parameter gradients cleared for the next step)."""
    if case.mode == "fwd":
        def step():
            with torch.no_grad():
                module(x)
        return step
    x = x.detach().requires_grad_()
    dy = torch.randn_like(_outputs(module(x))[0])

    def step():
        y = _outputs(module(x))[0]
        y.backward(dy)
        module.zero_grad(set_to_none=True)
        x.grad = None
    return step


class _Timer:
    """Wall time of a call: CUDA events on a GPU, time.perf_counter on the CPU."""

    def __init__(self, device):
        self.cuda = device.startswith("cuda")

    def __call__(self, fn):
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            return lambda: start.elapsed_time(end) / 1e3
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        return lambda: elapsed


def time_interleaved(steps, device, warmup=2, min_seconds=1.0, min_runs=5, max_runs=50):
    """Median and 20th/80th percentiles (seconds) per step function. Runs alternate between the
    implementations, so a busy moment on a shared machine hits both alike."""
    timer = _Timer(device)
    for _ in range(warmup):
        for step in steps.values():
            step()
    if timer.cuda:
        torch.cuda.synchronize()
    probe = {name: timer(step) for name, step in steps.items()}
    if timer.cuda:
        torch.cuda.synchronize()
    slowest = max(t() for t in probe.values())
    runs = int(min(max_runs, max(min_runs, min_seconds / max(slowest, 1e-6))))
    pending = {name: [] for name in steps}
    order = list(steps)
    for r in range(runs):
        for name in order if r % 2 == 0 else reversed(order):
            pending[name].append(timer(steps[name]))
    if timer.cuda:
        torch.cuda.synchronize()
    result = {}
    for name, timings in pending.items():
        times = sorted(t() for t in timings)
        quantiles = statistics.quantiles(times, n=5) if len(times) > 1 else [times[0]] * 4
        result[name] = {"median": statistics.median(times), "p20": quantiles[0],
                        "p80": quantiles[3], "runs": len(times)}
    return result


def peak_memory_bytes(step, device):
    """Peak memory allocated during one call, above what was allocated before it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    # On the CPU: replay the profiler's allocation events (+bytes, -bytes) in time order.
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak
