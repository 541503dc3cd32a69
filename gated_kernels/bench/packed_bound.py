"""How far time can follow the real lengths on the CPU: issue 15's proportionality target
(a packed batch within 1.2x of fill x the time at full length) against what a step costs by
the rows it runs.

For each `packed` suite shape with long-tailed lengths, one layer and direction on the inference
operators (lstm_inference / gru_inference): the time with every row of length T (`full`), the
time on the sorted packed batch (`packed`), and `steps`, the sum over steps of the time a step
takes with that step's running rows alone, each measured on a batch of that many rows at full
length. steps / (fill x full) is what the per-step costs allow: a step with one row still
streams all of W_hh, so it costs far more than 1/B of a full step.

    python -m gated_kernels.bench.packed_bound --threads 2
"""

import argparse
import time

import torch

from gated_kernels import ops, spec  # noqa: F401  (ops declares the operators)
from gated_kernels.bench.suites import Case, draw_lengths

SHAPES = ((300, 16, 384), (200, 32, 256), (100, 64, 512))  # the suite's long-tailed (T, B, H)


def _median_ms(fn, runs=7):
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[runs // 2] * 1e3


def _inference(cell, T, B, H, dtype, lengths=None):
    """One layer-direction's inference call on random weights."""
    g = torch.Generator().manual_seed(0)
    G = spec.gate_width(cell, H)
    x = torch.randn(T, B, H, generator=g).to(dtype)
    w_ih = (torch.randn(G, H, generator=g) * H**-0.5).to(dtype)
    w_hh = (torch.randn(G, H, generator=g) * H**-0.5).to(dtype)
    h0 = torch.zeros(B, H, dtype=dtype)
    if cell == "LSTM":
        return lambda: torch.ops.gated_kernels.lstm_inference(
            x, w_ih, None, w_hh, None, h0, h0, lengths, False)
    b_hh = torch.zeros(G, dtype=dtype)
    return lambda: torch.ops.gated_kernels.gru_inference(
        x, w_ih, None, w_hh, b_hh, h0, lengths, False)


def bound(cell, T, B, H, dtype):
    """(fill, full ms, packed ms, steps ms) for the suite's long-tailed lengths of this shape."""
    case = Case(cell, "fwd", T, B, H, H, "fp32", 1, True, "cpu", "longtail")
    lengths = draw_lengths(case, torch.Generator().manual_seed(1)).sort(descending=True).values
    rows = [int((lengths > t).sum()) for t in range(T)]
    fill = sum(rows) / (T * B)
    full = _median_ms(_inference(cell, T, B, H, dtype))
    packed = _median_ms(_inference(cell, T, B, H, dtype, lengths))
    per_step = {k: _median_ms(_inference(cell, T, k, H, dtype)) / T for k in set(rows)}
    return fill, full, packed, sum(per_step[k] for k in rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print("| cell | dtype | T, B, H | fill | full ms | packed ms | steps ms | "
          "packed / (fill x full) | steps / (fill x full) | packed / steps |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for cell in ("LSTM", "GRU"):
        for dtype in (torch.float32, torch.bfloat16):
            for T, B, H in SHAPES:
                fill, full, packed, steps = bound(cell, T, B, H, dtype)
                print(f"| {cell} | {str(dtype).removeprefix('torch.')} | {T}, {B}, {H} | "
                      f"{fill:.2f} | {full:.1f} | {packed:.1f} | {steps:.1f} | "
                      f"{packed / (fill * full):.2f}x | {steps / (fill * full):.2f}x | "
                      f"{packed / steps:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
