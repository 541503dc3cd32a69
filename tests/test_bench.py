"""The benchmark runner: its correctness gate, its outputs and its argument errors (no timing is
asserted here)."""

import json
import math
import subprocess
import sys

import pytest
import torch

import gated_kernels
from gated_kernels.bench import cli, measure, report
from gated_kernels.bench.suites import Case, draw_lengths
from gated_kernels.tolerance import allowed_error

TINY = ["--shape", "6,3,5,4", "--min-seconds", "0.01"]


def _perturbed(theirs, backend="auto"):
    """A wrong implementation: gated_kernels with one recurrent weight nudged by 1e-3."""
    ours = measure.ours_module(theirs, backend=backend)
    with torch.no_grad():
        ours.weight_hh_l0[0, 0] += 1e-3
    return ours


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
def test_gate_fails_a_wrong_implementation_and_reports_no_speedup(mode):
    case = Case("GRU", mode, T=6, B=3, I=5, H=4)
    prov = report.provenance("cpu")
    record = cli.run_case(case, prov, {}, ours_factory=_perturbed, min_seconds=0.01)
    assert record["gate"] == "FAIL"
    assert record["speedup"] is None and record["ours_median_s"] is None
    assert record["ours_out_error"] > record["allowed_out_error"]
    row = report.row(record)
    assert row[1] == "FAIL" and row[4] == "-"
    assert "1 failed the gate" in report.summary("custom", [record])


class _NaNOnTimedInput(torch.nn.Module):
    """Wraps gated_kernels' module; its output is NaN on the gate's timed input only."""

    def __init__(self, ours, timed):
        super().__init__()
        self.ours, self.timed = ours, timed

    def forward(self, x):
        y, h = self.ours(x)
        return (y * math.nan if torch.equal(x.detach(), self.timed) else y), h


def test_gate_fails_a_nan_on_one_of_its_inputs():
    """The gate's median over its inputs (measure.GATE_DRAWS) keeps a NaN on any one of them."""
    case = Case("GRU", "fwd", T=6, B=3, I=5, H=4)
    theirs, args = measure.torch_module(case), measure.make_input(case)
    ours = _NaNOnTimedInput(measure.ours_module(theirs), args[0])
    errors = measure.gate(case, theirs, ours, args)
    assert math.isnan(errors["ours_out_error"]) and not measure.gate_passed(case, errors)


def test_a_custom_shape_of_one_step_runs_the_cells_too():
    def cells(argv):
        return {c.cell for c in cli.select_cases(cli.parse_args(argv))}

    assert cells(["--shape", "1,3,5,4"]) == {"LSTM", "GRU", "LSTMCell", "GRUCell"}
    assert cells(["--shape", "6,3,5,4"]) == {"LSTM", "GRU"}
    assert cells(["--shape", "1,3,5,4", "--cell", "GRUCell"]) == {"GRUCell"}


@pytest.mark.parametrize("cell", ["LayerNormLSTM", "LayerNormGRU", "ZoneoutLSTM", "ZoneoutGRU"])
def test_a_layernorm_case_is_timed_against_the_python_loop(cell):
    """No torch.nn twin: the baseline is bench/loops.py's loop, with the same parameters (and,
    for zoneout in training, the same masks: the gate passes); our plain LSTM / GRU at the same
    shape is timed beside them (the `plain` peer)."""
    case = Case(cell, "fwdbwd", T=6, B=3, I=5, H=4)
    record = cli.run_case(case, report.provenance("cpu"), {}, min_seconds=0.01)
    assert record["gate"] == "PASS" and record["speedup"] > 0, record["error"]
    assert record["backend"] == "cpp"
    assert record["peers"]["plain"] > 0
    assert "time / our plain LSTM or GRU's" in report.summary("layernorm", [record])
    theirs = measure.torch_module(case)
    assert type(theirs).__name__ == f"Loop{cell}"
    ours = measure.ours_module(theirs)
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), theirs.parameters()))
    assert ours.zoneout == (0.1 if cell.startswith("Zoneout") else 0.0)


def test_a_case_that_cannot_run_is_an_error_record():
    def broken(theirs, backend="auto"):
        raise RuntimeError("no kernel for this dtype")

    case = Case("LSTM", "fwd", T=6, B=3, I=5, H=4)
    record = cli.run_case(case, report.provenance("cpu"), {}, ours_factory=broken)
    assert record["gate"] == "ERROR" and record["speedup"] is None
    assert record["error"] == "RuntimeError: no kernel for this dtype"
    assert report.row(record)[4] == "-"
    assert "1 could not run" in report.summary("custom", [record])


def test_peers_are_left_out_silently_where_absent():
    from gated_kernels.bench import peers

    assert peers.available(Case("LSTM", "fwd", T=6, B=3, I=5, H=4)) == {}  # CPU: no peers


def test_a_peer_that_runs_gets_its_own_column(monkeypatch):
    from gated_kernels.bench import peers

    def fake_peer(case):  # stands in for haste / flashrnn, which need a GPU
        return torch.nn.GRU(case.I, case.H)

    monkeypatch.setattr(peers, "available", lambda case: {"fake": fake_peer})
    case = Case("GRU", "fwdbwd", T=6, B=3, I=5, H=4)
    record = cli.run_case(case, report.provenance("cpu"), {}, min_seconds=0.01)
    assert record["gate"] == "PASS" and record["peers"]["fake"] > 0
    assert "fake ms" in report.table([record]).splitlines()[0]
    assert "fake ms" in report.markdown("custom", [record], report.provenance("cpu"))


ONE_STEP = {"LSTMCell": ("LSTMCell", 1), "GRUCell": ("GRUCell", 1), "LSTM-T1": ("LSTM", 1),
            "GRU-T1": ("GRU", 1)}


@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
@pytest.mark.parametrize("cell, T", ONE_STEP.values(), ids=ONE_STEP.keys())
def test_one_step_cases_pass_the_state_and_gate_every_gradient(cell, T, mode):
    """The cells and step suites' cases: the state goes in with the input, and the gate judges
    the gradients of the input, the state and every parameter."""
    case = Case(cell, mode, T=T, B=3, I=5, H=4)
    args = measure.make_input(case)
    assert len(args) == 2
    theirs = measure.torch_module(case)
    errors = measure.gate(case, theirs, measure.ours_module(theirs), args)
    assert errors["ours_grad_error"] <= errors["allowed_grad_error"]
    wrong = _perturbed_cell(theirs) if case.is_cell else _perturbed(theirs)
    assert measure.gate(case, theirs, wrong, args)["ours_out_error"] > errors["allowed_out_error"]
    record = cli.run_case(case, report.provenance("cpu"), {}, min_seconds=0.01)
    assert record["gate"] == "PASS" and record["speedup"] > 0


def _perturbed_cell(theirs):
    ours = measure.ours_module(theirs)
    with torch.no_grad():
        ours.weight_hh[0, 0] += 1e-3
    return ours


def test_cells_and_step_suites_cover_the_issue_grid():
    for name, cells in (("cells", {"LSTMCell", "GRUCell"}), ("step", {"LSTM", "GRU"})):
        cases = cli.suite(name, "cpu")
        assert {c.cell for c in cases} == cells and {c.T for c in cases} == {1}
        assert {c.B for c in cases} == {1, 8, 32, 64}
        assert {c.H for c in cases} == {64, 128, 256, 512, 1024}
        assert {c.mode for c in cases} == {"fwd", "fwdbwd"}


def test_gate_passes_the_real_implementation():
    case = Case("LSTM", "fwdbwd", T=6, B=3, I=5, H=4)
    record = cli.run_case(case, report.provenance("cpu"), {}, min_seconds=0.01)
    assert record["gate"] == "PASS" and record["speedup"] > 0
    assert record["ours_grad_error"] <= record["allowed_grad_error"]


def test_a_forced_backend_is_timed_next_to_autos_choice():
    case = Case("GRU", "fwdbwd", T=6, B=3, I=5, H=4)
    record = cli.run_case(case, report.provenance("cpu"), {}, backend="reference",
                          min_seconds=0.01)
    assert (record["backend"], record["auto_backend"]) == ("reference", "cpp")
    assert record["auto_median_s"] > 0 and record["auto_median_s"] != record["ours_median_s"]
    assert record["auto_speedup"] == record["torch_median_s"] / record["auto_median_s"]
    assert "backend auto: geomean" in report.summary("x", [record])
    assert "| reference | cpp |" in report.markdown("x", [record], report.provenance("cpu"))


def test_only_auto_keeps_the_cases_auto_routes_to_that_backend():
    case = Case("GRU", "fwd", T=6, B=3, I=5, H=4)
    prov = report.provenance("cpu")
    assert cli.run_case(case, prov, {}, backend="reference", min_seconds=0.01,
                        only_auto="torch") is None  # auto runs cpp here
    record = cli.run_case(case, prov, {}, backend="reference", min_seconds=0.01, only_auto="cpp")
    assert record["gate"] == "PASS" and record["auto_backend"] == "cpp"


def test_the_gpu_work_alone_gets_a_column_and_a_summary():
    case = Case("GRU", "fwd", T=6, B=3, I=5, H=4)
    prov = report.provenance("cpu")
    record = cli.run_case(case, prov, {}, min_seconds=0.01)
    assert record["gpu_speedup"] is None  # timed on a GPU only
    assert "gpu speedup" not in report.table([record])
    record["gpu_speedup"] = 2.5
    assert "| gpu speedup |" in report.markdown("x", [record], prov)
    assert "| 2.50x |" in report.markdown("x", [record], prov)
    assert "GPU work alone: geomean 2.50x (min 2.50x)" in report.summary("x", [record])


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["fwd", "fwdbwd"])
def test_cuda_cases_time_the_gpu_work_alone(mode):
    """The GPU's work alone is never longer than the call timed from an idle GPU, which adds
    the launches the GPU waits for."""
    case = Case("LSTM", mode, T=64, B=16, I=256, H=256, dtype="bf16", device="cuda")
    record = cli.run_case(case, report.provenance("cuda"), {}, backend="torch",
                          min_seconds=0.05)
    assert record["gate"] == "PASS"
    for name in ("ours", "torch"):
        assert 0 < record[f"{name}_gpu_median_s"] <= 1.1 * record[f"{name}_median_s"]
    assert record["gpu_speedup"] == record["torch_gpu_median_s"] / record["ours_gpu_median_s"]


def test_packed_suite_covers_the_issue_grid():
    cases = cli.suite("packed", "cpu")
    assert {(c.cell, c.layers, c.lengths) for c in cases} == {
        (cell, layers, lengths) for cell in ("LSTM", "GRU") for layers in (1, 2)
        for lengths in ("uniform", "longtail")}
    assert all(c.bidirectional for c in cases) and {c.dtype for c in cases} == {"fp32", "bf16"}


@pytest.mark.parametrize("lengths,fill", [("uniform", (0.35, 0.75)), ("longtail", (0.1, 0.45))])
def test_a_packed_case_records_its_fill_and_time_against_full_length(lengths, fill):
    case = Case("LSTM", "fwdbwd", T=40, B=16, I=8, H=8, bidirectional=True, lengths=lengths)
    (packed,) = measure.make_input(case)
    assert isinstance(packed, torch.nn.utils.rnn.PackedSequence)
    assert int(packed.batch_sizes[-1]) >= 1 and len(packed.batch_sizes) == case.T
    record = cli.run_case(case, report.provenance("cpu"), {}, min_seconds=0.01)
    assert record["gate"] == "PASS" and record["speedup"] > 0
    assert fill[0] < record["fill"] < fill[1]
    assert record["proportionality"] == record["ours_median_s"] / (
        record["fill"] * record["ours_full_median_s"])
    assert "| vs fill |" in report.markdown("x", [record], report.provenance("cpu"))


def test_an_unknown_length_distribution_is_refused():
    case = Case("GRU", "fwd", T=6, B=3, I=5, H=4, lengths="zipf")
    with pytest.raises(ValueError, match=r"lengths must be one of \('uniform', 'longtail'\), got 'zipf'"):
        measure.make_input(case)


def test_gpu_suite_covers_the_training_grid_in_every_dtype():
    cases = cli.suite("gpu", "cuda")
    assert {c.B for c in cases} == {1, 16, 64, 128, 256}
    assert {c.H for c in cases} == {256, 512, 1024, 2048}
    assert {c.dtype for c in cases} == {"fp16", "bf16", "fp32"}
    assert {(c.cell, c.mode) for c in cases} == {(c, m) for c in ("LSTM", "GRU")
                                                for m in ("fwd", "fwdbwd")}


@pytest.mark.cuda
def test_torch_baseline_has_its_weights_flattened_as_users_do():
    """cuDNN warns and copies the weights on every call when they are not one buffer."""
    case = Case("LSTM", "fwd", T=4, B=2, I=8, H=16, layers=2, device="cuda")
    theirs = measure.torch_module(case)
    storages = {p.untyped_storage().data_ptr() for p in theirs.parameters()}
    ours = measure.ours_module(theirs, backend="torch")
    assert len(storages) == 1
    assert len({p.untyped_storage().data_ptr() for p in ours.parameters()}) == 1


def test_outputs_json_markdown_and_plot(tmp_path, capsys):
    paths = {k: tmp_path / f"out.{k}" for k in ("json", "md", "png")}
    cli.main(TINY + ["--json", str(paths["json"]), "--markdown", str(paths["md"]),
                     "--plot", str(paths["png"])])
    records = json.loads(paths["json"].read_text())
    assert len(records) == 4  # LSTM and GRU, fwd and fwdbwd
    required = {
        "case", "cell", "mode", "T", "B", "I", "H", "dtype", "layers", "bidirectional", "device",
        "gate", "ours_out_error", "torch_out_error", "ours_grad_error", "torch_grad_error",
        "allowed_out_error", "allowed_grad_error", "ours_median_s", "ours_p20_s", "ours_p80_s",
        "torch_median_s", "torch_p20_s", "torch_p80_s", "ours_runs", "torch_runs",
        "ours_peak_bytes", "torch_peak_bytes", "speedup", "machine", "threads", "torch",
        "triton", "cudnn", "gated_kernels", "git_commit", "timestamp", "error",
    }
    for record in records:
        assert required <= set(record), required - set(record)
        assert record["gate"] == "PASS"
        assert record["ours_p20_s"] <= record["ours_median_s"] <= record["ours_p80_s"]
    markdown = paths["md"].read_text()
    assert "Machine:" in markdown and "| LSTM-fwd-T6-B3-I5-H4-fp32 | PASS |" in markdown
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "custom: 4 cases, 0 failed the gate" in capsys.readouterr().out


BAD_ARGUMENTS = {
    "unknown-suite": ["--suite", "huge"],
    "negative-size": ["--shape", "10,-1,4,4"],
    "malformed-shape": ["--shape", "10,4,4"],
    "zero-layers": ["--layers", "0"],
    "cuda-without-gpu": ["--device", "cuda"],
    "only-auto-without-a-forced-backend": ["--only-auto", "triton"],
}


@pytest.mark.parametrize("argv", BAD_ARGUMENTS.values(), ids=BAD_ARGUMENTS.keys())
def test_bad_arguments_exit_with_one_line(argv):
    if argv == ["--device", "cuda"] and torch.cuda.is_available():
        argv = ["--device", "cuda", "--dtype", "int8"]  # still a bad argument with a GPU
    result = subprocess.run([sys.executable, "-m", "gated_kernels.bench", *argv],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gated-kernels-bench: error:"), result.stderr
    assert "Traceback" not in result.stderr


def test_packed_bound_measures_the_suite_s_long_tailed_lengths():
    """bench.packed_bound's numbers for one small shape: the fill of the suite's long-tailed
    lengths, and a time for each of the three runs (no speed is asserted)."""
    from gated_kernels.bench import packed_bound

    fill, full, packed, steps = packed_bound.bound("GRU", 12, 4, 8, torch.float32)
    case = Case("GRU", "fwd", 12, 4, 8, 8, "fp32", 1, True, "cpu", "longtail")
    lengths = draw_lengths(case, torch.Generator().manual_seed(1))
    assert fill == pytest.approx(float(lengths.sum()) / (12 * 4))
    assert min(full, packed, steps) > 0


def _torch_nn_runs(case):
    """Whether torch.nn runs `case` on this CPU. Its LSTM under bfloat16 autocast does not on one
    without AVX-512 (an AMD EPYC Zen 3): oneDNN finds no bfloat16 primitive ("could not create a
    primitive descriptor"), and the runner records the case as ERROR."""
    theirs, args = measure.torch_module(case), measure.make_input(case)
    try:
        with measure.autocast(case):
            theirs(*args)
    except RuntimeError as error:
        if "could not create a primitive" not in str(error):
            raise
        return False
    return True


@pytest.mark.parametrize("cell, dtype", [("LSTM", torch.bfloat16), ("GRU", torch.float32),
                                         ("LSTMCell", torch.float32)])
def test_an_amp_case_runs_float32_modules_under_autocast(cell, dtype):
    """amp_bf16: float32 weights and input, calls under CPU autocast. The gate's tolerance is
    that of torch.nn's output dtype there: bfloat16 for its LSTM, float32 for the rest."""
    case = Case(cell, "fwdbwd", T=6 if "Cell" not in cell else 1, B=3, I=5, H=4,
                dtype="amp_bf16")
    assert next(measure.torch_module(case).parameters()).dtype == torch.float32
    record = cli.run_case(case, report.provenance("cpu"), {}, min_seconds=0.01)
    if not _torch_nn_runs(case):  # the record says so, and no speedup
        assert record["gate"] == "ERROR" and record["speedup"] is None
        assert "torch.nn.modules.rnn.LSTM cannot run this case" in record["error"]
        return
    assert record["gate"] == "PASS" and record["speedup"] > 0
    assert record["allowed_out_error"] == allowed_error(dtype, "out", record["torch_out_error"])
    # Autocast was on: torch.nn's products ran in bfloat16 (its GRU's and cells' too, whose
    # gates and outputs stay float32), so its error is bfloat16's size.
    assert record["torch_out_error"] > 1e-4


@pytest.mark.parametrize("cell", ["LSTMCell", "GRUCell"])
def test_a_loop_region_case_gates_the_bfloat16_products_it_times(cell, monkeypatch):
    """amp_bf16_loop: the timed inference calls share one autocast region, where ours take
    bfloat16 products from the second call on (cpu_products; weights larger than twice the L2
    cache, here made 64 bytes). The gate checks that path: an earlier call in the same region,
    then the gated one under no_grad, so ours' error is bfloat16's size, not float32's (about
    1e-7)."""
    monkeypatch.setattr(gated_kernels.autocast, "_l2_bytes", lambda: 64)
    case = Case(cell, "fwd", T=1, B=3, I=5, H=4, dtype="amp_bf16_loop")
    record = cli.run_case(case, report.provenance("cpu"), {}, min_seconds=0.01)
    assert record["gate"] == "PASS" and record["speedup"] > 0
    assert record["allowed_out_error"] == allowed_error(torch.float32, "out",
                                                        record["torch_out_error"])
    assert record["torch_out_error"] > 1e-4 and record["ours_out_error"] > 1e-4
