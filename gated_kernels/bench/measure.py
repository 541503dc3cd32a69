"""Measuring one case: the correctness gate, interleaved timing, peak memory."""

import contextlib
import math
import os
import statistics
import time

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import gated_kernels
from gated_kernels.autocast import compute_dtype
from gated_kernels.bench import loops
from gated_kernels.bench.suites import AUTOCAST, DTYPES, LOOP_REGION, draw_lengths
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
    """The torch.nn module of a case as a user has it, with a fixed seed (so every
    implementation gets the same weights): built on the CPU and moved with `.to(device)`, which
    on CUDA flattens an LSTM's or GRU's weights into one cuDNN buffer. (Built with device=cuda,
    the weights stay apart and cuDNN copies them into a buffer on every call.)"""
    torch.manual_seed(seed)
    if case.cell in loops.LOOPS:  # no torch.nn module: the Python loop users write
        return loops.LOOPS[case.cell](case.I, case.H, dtype=DTYPES[case.dtype]).to(case.device)
    kwargs = {"dtype": DTYPES[case.dtype]}
    if not case.is_cell:
        kwargs.update(num_layers=case.layers, bidirectional=case.bidirectional)
    return getattr(torch.nn, case.cell)(case.I, case.H, **kwargs).to(case.device)


def ours_module(theirs, backend="auto"):
    """gated_kernels' module with torch.nn's weights (or a loop's): the default implementation
    under test."""
    name = type(theirs).__name__
    if name.startswith("Loop"):
        weight = theirs.weight_ih_l0
        ours = getattr(gated_kernels, theirs.ours_name())(
            weight.shape[1], theirs.hidden_size, dtype=weight.dtype, device=weight.device,
            backend=backend, **theirs.OURS_KWARGS)
        ours.load_state_dict(theirs.state_dict())
        return ours
    return getattr(gated_kernels, name).from_torch(theirs, backend=backend)


def make_input(case, seed=1):
    """The arguments of a call: (x [T, B, I],) for a sequence; for a one-step call (a cell, or
    T=1) the input and the state a loop over steps passes along: (x [B, I], (h, c) or h) for a
    cell, (x [1, B, I], (h0, c0) or h0) with states [L*D, B, H] for T=1; for a case with
    `lengths`, (x as a PackedSequence of rows in no particular order,)."""
    g = torch.Generator(device=case.device).manual_seed(seed)

    def draw(*shape):
        return torch.randn(*shape, generator=g, device=case.device, dtype=DTYPES[case.dtype])

    if case.is_cell:
        x, state = draw(case.B, case.I), draw(case.B, case.H)
        return (x, (state, draw(case.B, case.H)) if case.cell == "LSTMCell" else state)
    x = draw(case.T, case.B, case.I)
    if case.lengths:
        lengths = draw_lengths(case, torch.Generator().manual_seed(seed))
        return (pack_padded_sequence(x, lengths, enforce_sorted=False),)
    if case.T != 1:
        return (x,)
    shape = (case.layers * (2 if case.bidirectional else 1), case.B, case.H)
    return (x, (draw(*shape), draw(*shape)) if case.cell == "LSTM" else draw(*shape))


def autocast(case):
    """The torch.autocast context a case's forward calls run in: off but for the amp dtypes."""
    dtype = AUTOCAST.get(case.dtype)
    return torch.autocast(case.device, dtype=dtype, enabled=dtype is not None)


def loop_region(case):
    """The autocast region a case's timed calls all run in: one held open across them for the
    LOOP_REGION dtypes (each call's own region then nests in it, and its exit keeps autocast's
    cache of weight casts), else none."""
    if case.dtype not in LOOP_REGION:
        return contextlib.nullcontext()
    return torch.autocast(case.device, dtype=AUTOCAST[case.dtype])


def backend_of(case, module, args):
    """The backend a timed call of our `module` runs (auto resolved as in that call), and on
    the Triton backend its forward and backward paths, e.g. "triton:persistent/per_step"."""
    x, hx = args[0], (args[1] if len(args) > 1 else None)
    with torch.set_grad_enabled(case.mode == "fwdbwd"), autocast(case):
        if case.mode == "fwdbwd":
            x = _with_grad(x)
        backend = module._call_backend(x) if case.is_cell else module._call_backend(x, hx)
        dtype = compute_dtype(case.cell, _leaves(x)[0]) or _leaves(x)[0].dtype
    if backend != "triton" or not x.is_cuda:
        return backend
    from gated_kernels import dispatch

    cell = case.cell.removesuffix("Cell")
    paths = dispatch.triton_paths(torch.cuda.get_device_properties(x.device), cell, dtype,
                                  case.B, case.H)
    return f"triton:{paths[0]}/{paths[1]}"


def _map(fn, args):
    """fn applied to every tensor of nested tuples of tensors, the nesting kept; a
    PackedSequence's data counts as a tensor."""
    if isinstance(args, torch.Tensor):
        return fn(args)
    if isinstance(args, PackedSequence):
        return args._replace(data=fn(args.data))
    return tuple(_map(fn, a) for a in args)


def _leaves(args):
    """The tensors of nested tuples, in order (a PackedSequence's data)."""
    if isinstance(args, torch.Tensor):
        return [args]
    if isinstance(args, PackedSequence):
        return [args.data]
    return [t for a in args for t in _leaves(a)]


def _outputs(case, out):
    """A call's output tensors: [h] (GRUCell), [h, c] (LSTMCell), [y, *final states] (y's
    data for a PackedSequence)."""
    if case.is_cell:
        return list(out) if isinstance(out, tuple) else [out]
    y, state = out
    y = y.data if isinstance(y, PackedSequence) else y
    return [y, *(state if isinstance(state, tuple) else (state,))]


def fill_ratio(args):
    """sum(lengths) / (T B) of a PackedSequence input."""
    batch_sizes = args[0].batch_sizes
    return float(batch_sizes.sum()) / (len(batch_sizes) * int(batch_sizes[0]))


def full_length_args(case, args):
    """The same batch with every row running all T steps: the padded input, [T, B, I]."""
    x = pad_packed_sequence(args[0], total_length=case.T)[0]
    return (x,)


def _with_grad(args):
    return _map(lambda t: t.detach().requires_grad_(), args)


def _earlier_step(case, module, args):
    """For the LOOP_REGION dtypes, one call whose result is dropped, in the region held open
    (loop_region): the gated call that follows then runs as the timed loop's later steps do,
    with the weight casts cached and the module's previous call in the same region."""
    if case.dtype in LOOP_REGION:
        with autocast(case):
            module(*args)


def _run_with_grads(case, module, args, seed=2):
    """Outputs and the gradients (inputs and states, then every parameter) of
    sum(outputs * fixed random weights). torch's RNG seeded first: zoneout's masks (drawn in
    float32 whatever the dtype) come out the same in every implementation."""
    args = _with_grad(args)
    with loop_region(case):
        _earlier_step(case, module, args)
        torch.manual_seed(seed)
        with autocast(case):
            outs = _outputs(case, module(*args))
        g = torch.Generator(device=outs[0].device).manual_seed(seed)
        # Drawn in float64 and cast, so every dtype gets the same upstream gradient.
        weights = [torch.randn(o.shape, generator=g, device=o.device,
                               dtype=torch.float64).to(o.dtype) for o in outs]
        grads = torch.autograd.grad(outs, [*_leaves(args), *module.parameters()], weights)
    return [o.detach() for o in outs], grads


def _run_inference(case, module, args, seed=2):
    """Outputs of the call a timed inference step makes: under no_grad, where the CPU paths
    differ from training (e.g. bfloat16 products under autocast, cpu_products)."""
    with torch.no_grad(), loop_region(case):
        _earlier_step(case, module, args)
        torch.manual_seed(seed)
        with autocast(case):
            return _outputs(case, module(*args))


# Inputs the gate draws: the timed input and GATE_DRAWS - 1 others of the same case (make_input's
# next seeds). One input is not enough where the recurrence amplifies rounding: on the float32
# LayerNormLSTM at T=100, B=1, H=256 (suite layernorm), moving the input by half an ulp moves the
# exact float64 result by up to 3e-4 (outputs) and 2.5e-3 (gradients). Over nine inputs, ours'
# errors ranged 2e-5-4e-4 (outputs) and 4e-5-1e-3 (gradients), the Python loop's 1.4e-5-2.2e-4
# and 7e-5-8.5e-4, each ahead on about half, so one input decided PASS or FAIL by luck (the timed
# one put ours at 3.7e-4 against the loop's 1.0e-4). Inputs one ulp away do not help: they follow
# the same trajectory, and each implementation's rounding along it repeats. The median of three
# is each side's typical error; a real mistake (a wrong gate, a missing term) is 1e-2 or more on
# every input.
GATE_DRAWS = 3


def _errors(case, module, args, ref_outs, ref_grads):
    """Largest relative errors of `module`'s outputs and gradients against the reference's, and
    the dtype of its outputs. In fwd cases the outputs are those of the timed call."""
    outs, grads = _run_with_grads(case, module, args)
    if case.mode == "fwd":
        outs = _run_inference(case, module, args)
    out_error = max(map(max_rel_error, outs, ref_outs))
    return out_error, max(map(max_rel_error, grads, ref_grads)), outs[0].dtype


def _median(errors):
    """The median error, NaN if any is: a NaN would sort anywhere and could drop out of it."""
    errors = list(errors)
    return math.nan if any(math.isnan(e) for e in errors) else statistics.median(errors)


def gate(case, theirs, ours, args):
    """Errors of ours and of torch.nn against a float64 reference, each the median over the timed
    input and GATE_DRAWS - 1 others (the reference run on each), and whether ours is within
    the allowed error (gated_kernels.tolerance), for outputs and for gradients. The reference is
    gated_kernels' pure-PyTorch backend in float64."""
    reference = ours_module(theirs, backend="reference").double()
    draws = {"ours": [], "torch": []}
    for draw in range(GATE_DRAWS):
        inputs = args if draw == 0 else make_input(case, seed=1 + draw)
        ref_outs, ref_grads = _run_with_grads(case, reference, _map(torch.Tensor.double, inputs))
        for name, module in (("ours", ours), ("torch", theirs)):
            try:
                draws[name].append(_errors(case, module, inputs, ref_outs, ref_grads))
            except Exception as error:  # the record says which side cannot run the case
                module_name = f"{type(module).__module__}.{type(module).__name__}"
                raise RuntimeError(f"{module_name} cannot run this case: "
                                   f"{type(error).__name__}: {error}") from error
    result = {}
    for name, errors in draws.items():
        result[f"{name}_out_error"] = _median(e[0] for e in errors)
        result[f"{name}_grad_error"] = _median(e[1] for e in errors)
    # torch.nn's output dtype: under autocast, the dtype it computes in, which for the CPU GRU
    # and cells stays float32.
    dtype = draws["torch"][0][2]
    result["allowed_out_error"] = allowed_error(dtype, "out", result["torch_out_error"])
    result["allowed_grad_error"] = allowed_error(dtype, "grad", result["torch_grad_error"])
    return result


def gate_passed(case, errors):
    ok = errors["ours_out_error"] <= errors["allowed_out_error"]
    if case.mode == "fwdbwd":
        ok = ok and errors["ours_grad_error"] <= errors["allowed_grad_error"]
    return ok


def step_fn(case, module, args):
    """One timed call: inference under no_grad, or a training step (forward, backward with a
    fixed upstream gradient on the first output, gradients cleared for the next step). In a
    training step the input and state require grad, as in a loop over steps."""
    if case.mode == "fwd":
        def step():
            with torch.no_grad(), autocast(case):
                module(*args)
        return step
    args = _with_grad(args)
    leaves = _leaves(args)
    with autocast(case):
        dy = torch.randn_like(_outputs(case, module(*args))[0])

    def step():
        with autocast(case):
            y = _outputs(case, module(*args))[0]
        y.backward(dy)
        module.zero_grad(set_to_none=True)
        for t in leaves:
            t.grad = None
    return step


class _Timer:
    """Wall time of a call: CUDA events on a GPU, time.perf_counter on the CPU.

    On a GPU each call starts on an idle device: the events then time the call as a user's
    loop sees it, the larger of its GPU time and the time the CPU takes to launch its kernels.
    Left queued behind the previous call, a call whose launches outlast its kernels (cuDNN
    launches a few kernels a step) would be timed on kernels the CPU had queued while the GPU
    ran the previous call. The H200 run of 2026-11-30, queued, timed torch.nn's GRU forward
    (T=256, B=64, H=512, bf16) at 3.0 ms on torch.nn's module, which always followed a long
    kernel, and at 4.8 ms as the same code run by ours, which mostly followed its own launches.

    `gpu_time(fn, launch_s)` times the GPU's work alone, as in a model whose other layers keep
    the GPU busy while the CPU launches: the device first sleeps longer than the call takes to
    launch (launch_s), so every kernel of the call is queued before the start event passes."""

    def __init__(self, device):
        self.cuda = device.startswith("cuda")
        if self.cuda:  # torch.cuda._sleep counts clock cycles: how many a second, measured
            cycles = 10**7
            elapsed = self._events(lambda: torch.cuda._sleep(cycles))
            torch.cuda.synchronize()
            self.cycles_per_s = cycles / elapsed()

    def __call__(self, fn):
        if self.cuda:
            torch.cuda.synchronize()
            return self._events(fn)
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        return lambda: elapsed

    def gpu_time(self, fn, launch_s):
        torch.cuda.synchronize()
        torch.cuda._sleep(int((1.5 * launch_s + 1e-4) * self.cycles_per_s))
        return self._events(fn)

    @staticmethod
    def _events(fn):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        return lambda: start.elapsed_time(end) / 1e3


def _launch_seconds(step):
    """CPU time of one call with the GPU left to run behind it (synchronized before and after,
    not within)."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    step()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed


def _stats(times):
    times = sorted(times)
    quantiles = statistics.quantiles(times, n=5) if len(times) > 1 else [times[0]] * 4
    return {"median": statistics.median(times), "p20": quantiles[0], "p80": quantiles[3],
            "runs": len(times)}


def time_interleaved(steps, device, warmup=2, min_seconds=1.0, min_runs=5, max_runs=1000):
    """Median and 20th/80th percentiles (seconds) per step function. Runs alternate between the
    implementations, so a busy moment on a shared machine hits both alike. On a GPU each run
    also times the GPU's work alone (_Timer.gpu_time): "gpu_median"."""
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
    launch = {name: _launch_seconds(step) for name, step in steps.items()} if timer.cuda else {}
    pending = {name: [] for name in steps}
    gpu_pending = {name: [] for name in launch}
    order = list(steps)
    for r in range(runs):
        for name in order if r % 2 == 0 else reversed(order):
            pending[name].append(timer(steps[name]))
            if timer.cuda:
                gpu_pending[name].append(timer.gpu_time(steps[name], launch[name]))
    if timer.cuda:
        torch.cuda.synchronize()
    result = {name: _stats([t() for t in timings]) for name, timings in pending.items()}
    for name, timings in gpu_pending.items():
        result[name]["gpu_median"] = statistics.median(t() for t in timings)
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
