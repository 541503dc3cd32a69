"""A short demo: gated_kernels' C++ LSTM and GRU layers next to torch.nn on the CPU.

    python -m gated_kernels.demo

One layer, float32, the torch.nn module's own weights. For each cell it prints the largest
difference from torch.nn on the output, the final state and every gradient, and the median
time of each side (interleaved runs, same process), inference and training step.
"""

import statistics
import time

import torch

from gated_kernels import cpp_available
from gated_kernels.functional import gru_layer, lstm_layer

T, B, I, H = 100, 32, 256, 256
REPEATS = 15


def _ours(module, x, state):
    w = [getattr(module, f"{name}_l0") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    if isinstance(module, torch.nn.LSTM):
        y, h_n, c_n = lstm_layer(x, state[0][0], state[1][0], *w, backend="cpp")
        return y, (h_n[None], c_n[None])
    y, h_n = gru_layer(x, state[0], *w, backend="cpp")
    return y, h_n[None]


def _loss(out):
    y, state = out
    states = state if isinstance(state, tuple) else (state,)
    return y.square().mean() + sum(s.square().mean() for s in states)


def _step(fn, module, x, state, train):
    if not train:
        with torch.no_grad():
            fn(module, x, state)
        return None
    out = fn(module, x, state)
    return out, torch.autograd.grad(_loss(out), [x, *module.parameters()])


def _max_error(ours, theirs):
    flat = lambda t: [t] if isinstance(t, torch.Tensor) else [u for v in t for u in flat(v)]
    return max((a - b).abs().max().item() for a, b in zip(flat(ours), flat(theirs)))


def _median_ms(times):
    return 1e3 * statistics.median(times)


def run(cell):
    module = getattr(torch.nn, cell)(I, H)
    x = torch.randn(T, B, I, requires_grad=True)
    state = torch.zeros(1, B, H)
    state = (state, state.clone()) if cell == "LSTM" else state
    theirs = lambda m, x_, s: m(x_, s)
    error = _max_error(_step(_ours, module, x, state, True), _step(theirs, module, x, state, True))
    print(f"{cell}  T={T} B={B} I={I} H={H} float32, {torch.get_num_threads()} threads")
    print(f"  max |gated_kernels - torch.nn| over output, state and all gradients: {error:.2e}")
    for train in (False, True):
        times = {"gated_kernels": [], "torch.nn": []}
        for _ in range(REPEATS):  # interleaved, so both sides see the same machine load
            for name, fn in (("gated_kernels", _ours), ("torch.nn", theirs)):
                start = time.perf_counter()
                _step(fn, module, x, state, train)
                times[name].append(time.perf_counter() - start)
        ours_ms, theirs_ms = _median_ms(times["gated_kernels"]), _median_ms(times["torch.nn"])
        mode = "training step" if train else "inference"
        print(f"  {mode:14s} gated_kernels {ours_ms:7.2f} ms   torch.nn {theirs_ms:7.2f} ms   "
              f"speedup {theirs_ms / ours_ms:.2f}x")


def main():
    if not cpp_available():
        raise SystemExit("the C++ extension is not built: pip install --no-build-isolation .")
    torch.manual_seed(0)
    for cell in ("LSTM", "GRU"):
        run(cell)


if __name__ == "__main__":
    main()
