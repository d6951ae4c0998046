"""`dlc bench`: the table (min, median, p10, p90, p90/p10 per phase), the thread pinning, and the
warning for scattered times. No timing threshold is asserted: the figures depend on the machine;
the warning logic is checked as a function of synthetic times."""
import math
import os

import pytest

import dlc.api as cli_api
from dlc.cli import main
from dlc.runtime.bench import SPREAD_LIMIT, THREAD_VARS, time_stats, unreliable
from conftest import EXAMPLES, ROOT, dlc_cli, needs_emu

COLUMNS = ["phase", "min ms", "median ms", "p10 ms", "p90 ms", "p90/p10"]


def parse_table(out: str) -> dict[str, dict[str, float]]:
    """phase -> {column: value} from the table `dlc bench` prints."""
    lines = out.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("phase"))
    assert lines[head].split("  ")[0] == "phase"
    for c in COLUMNS:
        assert c in lines[head], f"no column {c!r} in {lines[head]!r}"
    rows = {}
    for ln in lines[head + 1:]:
        parts = ln.split()
        if not parts or parts[0].startswith("warning"):
            break
        assert len(parts) == len(COLUMNS), ln
        rows[parts[0]] = dict(zip(COLUMNS[1:], map(float, parts[1:])))
    return rows


def bench(*args):
    """`dlc bench ARGS` with none of the thread variables set."""
    return dlc_cli("bench", *args, env=dict.fromkeys(THREAD_VARS))


def test_bench_prints_every_phase_with_its_statistics():
    # no thread variables set: the timing runs in a child process started with them
    r = bench(EXAMPLES / "mlp.dln", "--backend", "interp", "--iters", "7", "--batch", "8")
    assert r.returncode == 0, r.stderr
    head = r.stdout.splitlines()[0]
    assert "backend interp, batch 8, 7 iterations" in head
    assert "threads: 1 (OMP_NUM_THREADS=1, OPENBLAS_NUM_THREADS=1, MKL_NUM_THREADS=1)" in head
    rows = parse_table(r.stdout)
    # step-deferred: 25 steps queued, then their losses read (as `dlc run` trains), per step
    assert list(rows) == ["forward", "forward+backward", "step", "step-deferred"]
    for phase, v in rows.items():
        assert 0 < v["min ms"] <= v["median ms"], phase
        assert v["min ms"] <= v["p10 ms"] <= v["median ms"] <= v["p90 ms"], phase
        # ms to 4 significant digits, the ratio to 2 decimals
        assert v["p90/p10"] == pytest.approx(v["p90 ms"] / v["p10 ms"], rel=0.002, abs=0.006), phase
        warned = f"warning: {phase}: unreliable" in r.stdout
        if abs(v["p90/p10"] - SPREAD_LIMIT) > 0.01:  # printed to 2 decimals: no verdict at the limit
            assert warned == (v["p90/p10"] > SPREAD_LIMIT), r.stdout


def test_threads_zero_leaves_the_libraries_alone():
    r = bench(EXAMPLES / "logreg.dln", "--backend", "interp", "--iters", "3", "--batch", "4", "--threads", "0")
    assert r.returncode == 0, r.stderr
    assert "threads: the libraries' defaults (OMP_NUM_THREADS=unset" in r.stdout
    assert list(parse_table(r.stdout)) == ["forward", "forward+backward", "step", "step-deferred"]


def test_a_scattered_phase_is_reported_unreliable(monkeypatch, capsys):
    for v in THREAD_VARS:  # already pinned: no child process, so the patch below applies
        monkeypatch.setenv(v, "1")
    monkeypatch.setattr(cli_api, "unreliable", lambda st, limit=SPREAD_LIMIT: True)
    rc = main(["bench", str(EXAMPLES / "xor.dln"), "--backend", "interp", "--iters", "3", "--batch", "4"])
    out = capsys.readouterr().out
    assert rc == 0
    warned = [ln for ln in out.splitlines() if ln.startswith("warning:")]
    assert [w.split(":")[1].strip() for w in warned] == ["forward", "forward+backward", "step", "step-deferred"]
    assert all(f"> {SPREAD_LIMIT}" in w for w in warned)


@pytest.mark.parametrize("flag,value", [("--iters", "0"), ("--batch", "0"), ("--threads", "-1")])
def test_bad_counts_are_user_errors(flag, value, capsys):
    rc = main(["bench", str(EXAMPLES / "xor.dln"), "--backend", "interp", flag, value])
    err = capsys.readouterr().err
    assert rc == 2 and f"{flag}: must be at least" in err and "Traceback" not in err


# -- the statistics and the warning, on synthetic times ------------------------------------------

def test_time_stats_of_known_times():
    st = time_stats([float(k) for k in range(10, 0, -1)])  # 1..10, in any order
    assert st["min"] == 1.0 and st["median"] == 5.5
    assert st["p10"] == pytest.approx(1.9) and st["p90"] == pytest.approx(9.1)
    assert st["spread"] == pytest.approx(9.1 / 1.9)


def test_steady_times_are_reliable():
    times = [1e-3] * 45 + [1.2e-3] * 5            # a few slow iterations do not move p90 past 1.5x
    assert not unreliable(time_stats(times))
    assert not unreliable(time_stats([2e-3] * 3))  # identical: spread 1


def test_scattered_times_are_unreliable():
    # a loaded machine: a fifth of the iterations 500x slower
    times = [1e-3] * 40 + [0.5] * 10
    st = time_stats(times)
    assert st["min"] == 1e-3 and st["median"] == 1e-3   # the min and median still look fine
    assert unreliable(st)
    assert unreliable(time_stats([1.0, 1.0, 2.0, 2.0]))   # p90/p10 = 1.97/1.0


def test_the_limit_is_inclusive_and_zero_times_are_unreliable():
    assert not unreliable({"spread": SPREAD_LIMIT})
    assert unreliable({"spread": math.nextafter(SPREAD_LIMIT, 2.0)})
    assert unreliable(time_stats([0.0, 0.0, 1e-3]))     # p10 of 0: no ratio, no figure
    assert unreliable({"spread": float("nan")})


@needs_emu
def test_bench_on_cuda_prints_what_a_step_asks_of_the_host():
    """Through the CuPy stand-in (tests/fake_cupy_path): the step phase reports one host sync and
    the 4 bytes of the loss per step, and the deferred phase one sync per 25 steps, counted by
    the cuda backend."""
    tests = ROOT / "tests"
    r = dlc_cli("bench", EXAMPLES / "mlp.dln", "--backend", "cuda", "--iters", "2", "--batch", "4", "-O", "2",
                env={"PYTHONPATH": os.pathsep.join([str(tests / "fake_cupy_path"), str(tests)])})
    assert r.returncode == 0, r.stderr
    assert "per step: 1 host sync, 4 bytes device-to-host" in r.stdout, r.stdout
    # the deferred phase queues 25 steps and reads their losses with one wait
    assert "per 25 steps: 1 host sync, 100 bytes device-to-host" in r.stdout, r.stdout
