"""GPU measurements for issue 5: one configuration per process; `gpu_check.sh` drives it.

    python benchmarks/bench_gpu.py deps    --wheels DIR --site DIR        # install what is missing, offline
    python benchmarks/bench_gpu.py env     [--json F]                     # versions, GPU, driver
    python benchmarks/bench_gpu.py step    --impl IMPL --example E --batch B [--precision P] [--json F] [--warm-only]
    python benchmarks/bench_gpu.py kernels [--example mlp] [--batch 1024 32768] [--json F]
    python benchmarks/bench_gpu.py summary --work DIR [--out FILE]        # the tables, from DIR's files

IMPL is one of
    dlc          the cuda backend, plain launches       (dlc.compile(..., backend="cuda"))
    dlc-graph    the cuda backend, the whole step replayed as one CUDA graph (cuda_graph=True)
    eager        PyTorch eager, the same network (benchmarks/torch_models.py), torch.optim
    compile      torch.compile(loss) + torch.compile(optimizer step), default mode
    compile-ro   the same with mode="reduce-overhead" (CUDA graphs)

`step` times one training step, two ways, each as the median over blocks of consecutive steps,
with CUDA events recorded on the stream the step runs on:
    step_ms   the API step as a user calls it: the batch comes from host memory (NumPy / CPU
              tensor), the loss goes back to the host (`model.train_step`, `loss.item()`); every
              step ends in a synchronisation, so this includes the host's launch work
    dev_ms    steps queued back to back on the device with the batch already there and no
              synchronisation in between: dlc's bound launches (or the captured graph) replayed;
              PyTorch's step without `.item()`. When the host keeps ahead of the device this is
              the device's time per step; when it does not, the host's launch rate
At --precision fp32 (the default) TF32 is off on both sides (torch.backends.*.allow_tf32 = False,
precision "highest", CUPY_TF32=0; dlc's fp32 kernels are plain fp32 FMA code). At tf32 dlc
compiles with precision="tf32" and PyTorch runs with torch.backends.cuda.matmul.allow_tf32 and
torch.backends.cudnn.allow_tf32 on (matmul precision "high"); at bf16 dlc compiles with
precision="bf16" and PyTorch's loss runs under torch.autocast(dtype=torch.bfloat16): the same
arithmetic on both sides (docs/precision.md). The record says which ("precision").

`deps` (standard library only: it runs before anything else can be imported) makes `import dlc`
work on a bare GPU machine without network: every module dlc and its tests need that this python
cannot import is installed from DIR (`benchmarks/gpu_prepare.sh` fills it), with pip --no-index
into --site (which gpu_check.sh puts first on PYTHONPATH); what is still missing is named, with
the fix. dlc itself goes there too: the prepared wheel where it matches the working tree file for
file, else a link to the working tree. Exit status 0 all there, 1 a test tool missing, 2 dlc
cannot run.

`kernels` times the MLP's step kernels one by one (each captured R times in a CUDA graph and
replayed, so launch gaps are left out), and compares the largest elementwise kernels' bandwidth
with a device-to-device copy (same size, and 1 GiB) and the matmul kernels' FLOP/s with cuBLAS
(cupy.matmul, same shapes and transposes, timed back to back and, where cuBLAS allows
stream capture, in a graph too: the faster counts; and 4096^3).

Everything degrades: a configuration that fails writes a record with "error" and exits 1.
"""
from __future__ import annotations

import argparse
import base64
import csv
import datetime
import hashlib
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import traceback
import zipfile
from pathlib import Path

os.environ.setdefault("CUPY_TF32", "0")  # before CuPy is imported: cuBLAS in full fp32

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

IMPLS = ("dlc", "dlc-graph", "eager", "compile", "compile-ro")
PRECISIONS = ("fp32", "tf32", "bf16")   # --precision (dlc.ir.precision.PRECISIONS; not imported: deps runs first)
PRECISION_IMPLS = ("dlc-graph", "eager")  # the columns of the precision table
TORCH_IMPLS = ("eager", "compile", "compile-ro")


def _emit(rec: dict, path) -> None:
    line = json.dumps(rec, default=float)
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")
    print(line, flush=True)


def _median(xs):
    xs = sorted(xs)
    n = len(xs)
    return float("nan") if n == 0 else (xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2]))


# -- deps -------------------------------------------------------------------------------------
# What dlc, then its tests, import, by module name: (module, what needs it, whether dlc itself does).
DEPS = (("numpy", "dlc", True), ("networkx", "dlc's IR graphs", True), ("lark", "dlc's parsers", True),
        ("jinja2", "dlc's CUDA templates", True), ("tqdm", "dlc's progress bars", True),
        ("pytest", "the test sections", False),
        ("hypothesis", "the tests (test_cuda.py imports it through test_emu.py)", False),
        ("setuptools", "tests/test_layout.py, which builds dlc's wheel", False),
        ("wheel", "tests/test_layout.py, which builds dlc's wheel", False))
# what gpu_prepare.sh carries for the wheels above: installed only when an import asks for it
HELPERS = {"sortedcontainers", "exceptiongroup", "typing_extensions", "packaging"}
DIST = {"attr": "attrs", "yaml": "pyyaml", "_pytest": "pytest"}   # module -> distribution, where they differ
PREPARE = ("run `bash benchmarks/gpu_prepare.sh` on a machine with network (it fills gpu_wheels/) "
           "and bring that folder along")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT)) + ("/" if path.is_dir() else "")
    except ValueError:
        return str(path) + ("/" if path.is_dir() else "")


def _wheel_for(folder: Path, module: str):
    dist = _norm(DIST.get(module, module))
    hits = sorted(p for p in folder.glob("*.whl") if _norm(p.name.split("-")[0]) == dist) if folder.is_dir() else []
    return hits[-1] if hits else None


def _probe(code: str, env: dict):
    """(ok, last line of the output) of `python -c code`, from / so that the current folder shadows nothing."""
    try:
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", env=env, timeout=120)
    except subprocess.TimeoutExpired:
        return False, "timed out after 120 s"
    lines = [l for l in (r.stdout if r.returncode == 0 else r.stderr).splitlines() if l.strip()]
    return r.returncode == 0, (lines[-1].strip() if lines else f"exit {r.returncode}")


def _importable(module: str, env: dict):
    return _probe(f"import {module} as m; print(getattr(m, '__version__', 'version unknown'))", env)


def _install(whl: Path, site: Path, env: dict):
    """Installs one wheel into `site` without its dependencies: pip --no-index, else (no pip) unpacked."""
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--no-compile", "--upgrade",
                        "--quiet", "--disable-pip-version-check", "--target", str(site), str(whl)],
                       capture_output=True, text=True, env=dict(env, PIP_ROOT_USER_ACTION="ignore"), timeout=300)
    if r.returncode == 0:
        return True, "pip"
    if "No module named pip" in r.stderr:
        with zipfile.ZipFile(whl) as z:   # a pure-Python wheel is the site-packages tree itself
            z.extractall(site, [n for n in z.namelist() if ".data/" not in n.split("/", 1)[0] + "/"])
        return True, "unpacked (no pip here)"
    err = [l for l in r.stderr.splitlines() if l.strip() and "WARNING" not in l]
    return False, (err[-1].strip() if err else f"pip exited {r.returncode}")


def wheel_differs(whl: Path, repo: Path) -> list[str]:
    """The package files in which the wheel of dlc and the working tree differ (by the wheel's
    RECORD hashes), plus files of the tree a new wheel would hold that this one lacks."""
    with zipfile.ZipFile(whl) as z:
        record = next(n for n in z.namelist() if n.endswith(".dist-info/RECORD"))
        rows = list(csv.reader(io.TextIOWrapper(z.open(record), "utf-8")))
    held = {r[0][len("dlc/"):]: r[1][len("sha256="):] for r in rows
            if len(r) > 1 and r[0].startswith("dlc/") and r[1].startswith("sha256=")}
    out = []
    for rel, digest in sorted(held.items()):
        f = repo / rel
        if not f.is_file():
            out.append(f"{rel} (gone)")
        elif base64.urlsafe_b64encode(hashlib.sha256(f.read_bytes()).digest()).rstrip(b"=").decode() != digest:
            out.append(rel)
    suffixes = {}
    for rel in held:
        suffixes.setdefault(str(Path(rel).parent), set()).add(Path(rel).suffix)
    for folder, sfx in suffixes.items():
        for f in sorted((repo / folder).iterdir()):
            rel = str(f.relative_to(repo))
            if f.is_file() and f.suffix in sfx and rel not in held:
                out.append(f"{rel} (new)")
    return out


def cmd_deps(args) -> int:
    site, wheels, repo = Path(args.site).resolve(), Path(args.wheels), Path(args.repo).resolve()
    site.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    path = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(site) not in path:
        env["PYTHONPATH"] = os.pathsep.join([str(site)] + path)
    held = f"{len(list(wheels.glob('*.whl')))} wheels" if wheels.is_dir() else "does not exist"
    print(f"python {sys.version.split()[0]} ({sys.executable}); wheels folder {_shown(wheels)} ({held})")
    print(f"installing into {site} (first on PYTHONPATH)")
    missing = []   # (module, needed by dlc itself, message)

    def report(module, state, detail):
        print(f"  {module:<16} {state:<9} {detail}")

    def ensure(module, why, core) -> bool:
        ok, said = _importable(module, env)
        if ok:
            report(module, "ok", said)
            return True
        whl = _wheel_for(wheels, module)
        if whl is None:
            msg = (f"{module} is not installed and {_shown(wheels)} has no {DIST.get(module, module)} wheel"
                   if wheels.is_dir() else f"{module} is not installed and there is no {_shown(wheels)} folder")
            missing.append((module, core, f"{msg} (needed by {why})"))
            report(module, "MISSING", f"{msg}; needed by {why} ({said})")
            return False
        done, how = _install(whl, site, env)
        if not done:
            missing.append((module, core, f"{module} is not installed and installing {_shown(whl)} failed: {how}"))
            report(module, "MISSING", f"installing {whl.name} failed: {how}")
            return False
        for _ in range(8):   # its own dependencies, one at a time, as its import names them
            ok, said = _importable(module, env)
            dep = None if ok else re.search(r"No module named '(\w+)", said)
            if ok or dep is None or dep.group(1) == module:
                break
            if not ensure(dep.group(1), f"{module}, for {why}", core):
                return False
        if ok:
            report(module, "installed", f"{said} from {_shown(whl)} ({how})")
            return True
        missing.append((module, core, f"{module} was installed from {_shown(whl)} but cannot be imported: {said}"))
        report(module, "MISSING", f"installed from {whl.name}, but: {said}")
        return False

    for module, why, core in DEPS:
        ensure(module, why, core)
    # any other wheel gpu_prepare.sh was asked for (onnx, matplotlib, ...): installed where this
    # python lacks that distribution; one that cannot be used here (another platform) is a note
    known = {_norm(DIST.get(m, m)) for m, _w, _c in DEPS} | {"dlc"} | HELPERS
    for whl in sorted(wheels.glob("*.whl")) if wheels.is_dir() else []:
        dist = _norm(whl.name.split("-")[0])
        if dist in known:
            continue
        known.add(dist)
        if _probe(f"import importlib.metadata as m; print(m.version({dist!r}))", env)[0]:
            continue
        done, how = _install(whl, site, env)
        report(dist, "installed" if done else "not used", f"{_shown(whl)} ({how}; not needed by the check itself)")

    # dlc itself, from site/dlc: the prepared wheel where it is this working tree, else a link to the tree
    if not any(core for _m, core, _s in missing):
        target = site / "dlc"
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            shutil.rmtree(target)
        whl = _wheel_for(wheels, "dlc")
        differ = wheel_differs(whl, repo) if whl is not None else None
        how = None
        if whl is not None and not differ:
            done, pip = _install(whl, site, env)
            how = f"{_shown(whl)}, which matches the working tree" if done else None
            if not done:
                print(f"  dlc: installing {whl.name} failed ({pip}); linking the working tree instead")
        if how is None:
            target.symlink_to(repo, target_is_directory=True)
            why = ("no dlc wheel in " + _shown(wheels) if whl is None else
                   f"{whl.name} differs from the working tree in {len(differ)} files "
                   f"({', '.join(differ[:4])}{', ...' if len(differ) > 4 else ''}); gpu_prepare.sh rebuilds it")
            how = f"the working tree through a link in {site} ({why})"
        ok, said = _probe("import dlc, os; from dlc.runtime import cuda; assert callable(dlc.compile); "
                          "print(dlc.__version__, os.path.realpath(dlc.__file__))", env)
        script = site / "bin" / "dlc"   # the entry point, as pip would write it (gpu_check.sh puts bin/ on PATH)
        if not script.exists():
            script.parent.mkdir(exist_ok=True)
            script.write_text(f"#!{sys.executable}\nimport sys\nfrom dlc.cli import main\nsys.exit(main())\n")
            script.chmod(0o755)
        if ok:
            report("dlc", "ok", f"{said.split()[0]} from {how}")
        else:
            missing.append(("dlc", True, f"dlc cannot be imported: {said}"))
            report("dlc", "MISSING", f"import dlc fails: {said}")
    else:
        report("dlc", "not tried", "its dependencies are missing")

    core = [m for m in missing if m[1]]
    if missing:
        said = "; ".join(msg for _m, _c, msg in core + [m for m in missing if not m[1]])
        print(f"MISSING: {said}" + (f": {PREPARE}" if "wheel" in said or "folder" in said else ""))
        return 2 if core else 1
    print("ok: every module dlc and its tests import is here")
    return 0


# -- env --------------------------------------------------------------------------------------
def cmd_env(args) -> int:
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(), "python": sys.version.split()[0], "machine": platform.machine()}

    def attempt(key, fn):
        try:
            info[key] = fn()
        except Exception as e:
            info[key] = f"unavailable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"

    import numpy
    info["numpy"] = numpy.__version__
    for mod in ("lark", "jinja2", "networkx", "pytest", "hypothesis"):
        attempt(mod, lambda m=mod: __import__(m).__version__)

    def cupy_info():
        import cupy
        rt = cupy.cuda.runtime
        d = {"version": cupy.__version__, "cuda_runtime": rt.runtimeGetVersion(),
             "cuda_driver": rt.driverGetVersion(), "devices": rt.getDeviceCount()}
        p = rt.getDeviceProperties(0)
        name = p["name"].decode() if isinstance(p["name"], bytes) else p["name"]
        d.update(gpu=name, cc=f"{p['major']}.{p['minor']}", sms=p["multiProcessorCount"],
                 mem_gib=round(p["totalGlobalMem"] / 2**30, 1), l2_mib=round(p.get("l2CacheSize", 0) / 2**20, 1))
        return d
    attempt("cupy", cupy_info)

    def torch_info():
        import torch
        d = {"version": torch.__version__, "cuda": torch.version.cuda,
             "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
             "cuda_available": torch.cuda.is_available()}
        if torch.cuda.is_available():
            d["gpu"] = torch.cuda.get_device_name(0)
        try:
            import triton
            d["triton"] = triton.__version__
        except Exception:
            d["triton"] = None
        return d
    attempt("torch", torch_info)

    def dlc_info():
        from dlc.runtime.backends import available
        return {b: available(b)[1] for b in ("interp", "emu", "cuda")}
    attempt("dlc_backends", dlc_info)
    if args.json:
        Path(args.json).write_text(json.dumps(info, indent=1, default=str) + "\n")
    for k, v in info.items():
        print(f"{k:<14} {v}")
    return 0


# -- step -------------------------------------------------------------------------------------
def _dlc_setup(args):
    import dlc
    from dlc.runtime.diff import synth_feeds
    model = dlc.compile(ROOT / "examples" / f"{args.example}.dln", backend="cuda",
                        cuda_graph=args.impl == "dlc-graph", precision=args.precision)
    b = model.engine
    feeds = synth_feeds(model.graph, args.batch, seed=0)
    cp = b.cp

    def step():
        return model.train_step(feeds, checked=True)[0]

    first = step()  # binds buffers, builds the program (and captures the graph)
    roots = tuple(model.roots("step"))
    dims = b._dims(feeds)
    fetch = (model.graph.meta.loss,)  # as Model.step runs it: the loss alone comes back
    key = (roots, True, fetch, tuple(sorted(dims.items())))
    prog = b._program(roots, dims, b._buffers(dims), True, fetch)
    if args.impl == "dlc-graph":
        graph = b._graphs.get(key) or (next(iter(b._graphs.values())) if len(b._graphs) == 1 else None)
        if graph is None:
            raise RuntimeError("cannot find the captured CUDA graph of the step")

        def dev():
            graph.launch(stream=b.stream)
    else:
        def dev():
            b._execute(prog)
    launches = sum(1 for op in prog["ops"] if op[0] == "launch")

    def timer():
        e0, e1 = cp.cuda.Event(), cp.cuda.Event()
        e0.record(b.stream)
        return lambda: (e1.record(b.stream), e1.synchronize(), cp.cuda.get_elapsed_time(e0, e1))[-1]
    extra = {"launches_per_step": launches, "first_loss": first}
    return step, dev, timer, extra


def _torch_setup(args):
    import torch
    import dlc
    import torch_models as tm
    from dlc.runtime.diff import synth_feeds
    tf32 = args.precision == "tf32"   # TF32 tensor cores for fp32 matmuls and convolutions, or not
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    dev_ = torch.device(args.device)
    if dev_.type == "cpu":  # a dry run: one thread, so that a busy small machine does not spin
        torch.set_num_threads(1)
    m = dlc.compile(ROOT / "examples" / f"{args.example}.dln", backend="interp")
    net = tm.build(args.example).to(dev_)
    tm.load_dlc_params(net, m.params)
    f = tm.loss_fn(args.example, net)
    if args.precision == "bf16":  # mixed precision as autocast does it: what dlc's bf16 computes
        fp32_loss = f

        def f(x, y):
            with torch.autocast(dev_.type, dtype=torch.bfloat16):
                return fp32_loss(x, y)
    opt = tm.optimizer(net, m.graph.meta.optimizer)
    extra = {"cudnn_benchmark": torch.backends.cudnn.benchmark, "allow_tf32": tf32,
             "autocast": "bfloat16" if args.precision == "bf16" else None}

    def opt_step():
        opt.step()
    mark = lambda: None  # noqa: E731
    if args.impl in ("compile", "compile-ro"):
        mode = "reduce-overhead" if args.impl == "compile-ro" else "default"
        f = torch.compile(f, mode=mode)
        extra["mode"] = mode
        if not args.eager_optimizer:
            opt_step = torch.compile(opt_step, mode=mode)
        extra["optimizer"] = "eager" if args.eager_optimizer else "compiled"
        if args.impl == "compile-ro" and hasattr(torch, "compiler") and \
                hasattr(torch.compiler, "cudagraph_mark_step_begin"):
            mark = torch.compiler.cudagraph_mark_step_begin
    feeds = synth_feeds(m.graph, args.batch, seed=0)
    xh, yh = tm.torch_batch(args.example, feeds)            # host tensors
    xd, yd = xh.to(dev_), yh.to(dev_)                        # device copies for dev_ms

    def step():
        mark()
        x, y = xh.to(dev_), yh.to(dev_)
        opt.zero_grad(set_to_none=True)
        loss = f(x, y)
        loss.backward()
        opt_step()
        return loss.item()

    def dev():
        mark()
        opt.zero_grad(set_to_none=True)
        f(xd, yd).backward()
        opt_step()

    t0 = time.perf_counter()
    first = step()
    extra["first_step_s"] = time.perf_counter() - t0
    extra["first_loss"] = first

    def timer():
        if dev_.type != "cuda":  # a dry run on the CPU: wall-clock
            t0 = time.perf_counter()
            return lambda: (time.perf_counter() - t0) * 1e3
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        e0.record()
        return lambda: (e1.record(), e1.synchronize(), e0.elapsed_time(e1))[-1]
    extra["device"] = str(dev_)
    return step, dev, timer, extra


def cmd_step(args) -> int:
    rec = {"kind": "step", "impl": args.impl, "example": args.example, "batch": args.batch,
           "precision": args.precision}
    t0 = time.perf_counter()
    try:
        setup = _dlc_setup if args.impl.startswith("dlc") else _torch_setup
        step, dev, timer, extra = setup(args)
        rec.update(extra)
        rec["setup_s"] = time.perf_counter() - t0
        n_warm = 3 if args.warm_only else args.warmup
        for _ in range(n_warm):
            step()
        for _ in range(n_warm):
            dev()
        if args.warm_only:
            rec["warm_only"] = True
            rec["total_s"] = time.perf_counter() - t0
            _emit(rec, args.json)
            return 0
        blocks, walls = [], []
        for _ in range(args.blocks):
            w0 = time.perf_counter()
            stop = timer()
            for _ in range(args.steps):
                loss = step()
            blocks.append(stop() / args.steps)
            walls.append((time.perf_counter() - w0) * 1e3 / args.steps)
        dblocks = []
        for _ in range(args.blocks):
            stop = timer()
            for _ in range(args.steps):
                dev()
            dblocks.append(stop() / args.steps)
        rec.update(step_ms=_median(blocks), step_ms_min=min(blocks), wall_ms=_median(walls),
                   dev_ms=_median(dblocks), dev_ms_min=min(dblocks), step_blocks=blocks, dev_blocks=dblocks,
                   steps_per_block=args.steps, last_loss=loss)
        if loss != loss:
            rec["error"] = "loss is NaN"
    except Exception as e:
        rec["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        traceback.print_exc(limit=4)
    rec["total_s"] = time.perf_counter() - t0
    _emit(rec, args.json)
    return 1 if "error" in rec else 0


# -- kernels ----------------------------------------------------------------------------------
def _graph_time(cp, stream, fn, reps: int, rounds: int = 5) -> float:
    """Median ms per call of `fn` (launches on `stream`), `reps` calls captured as one CUDA graph."""
    with stream:
        fn()
        stream.begin_capture()
        try:
            for _ in range(reps):
                fn()
        finally:
            g = stream.end_capture()
        g.launch(stream=stream)
        out = []
        for _ in range(rounds):
            e0, e1 = cp.cuda.Event(), cp.cuda.Event()
            e0.record(stream)
            g.launch(stream=stream)
            e1.record(stream)
            e1.synchronize()
            out.append(cp.cuda.get_elapsed_time(e0, e1) / reps)
    return _median(out)


def _stream_time(cp, stream, fn, reps: int, rounds: int = 5) -> float:
    """Median ms per call of `fn`, called `reps` times back to back between two events."""
    with stream:
        for _ in range(3):
            fn()
        out = []
        for _ in range(rounds):
            e0, e1 = cp.cuda.Event(), cp.cuda.Event()
            e0.record(stream)
            for _ in range(reps):
                fn()
            e1.record(stream)
            e1.synchronize()
            out.append(cp.cuda.get_elapsed_time(e0, e1) / reps)
    return _median(out)


def cmd_kernels(args) -> int:
    import numpy as np
    rec = {"kind": "kernels", "example": args.example}
    try:
        import cupy as cp
        import dlc
        from dlc.ir.ops import EPILOGUE_FAMILIES as STORE_HOOK  # families whose template ends in store.cu.j2
        from dlc.ir.ops import OPS, flops
        from dlc.runtime.diff import synth_feeds
        model = dlc.compile(ROOT / "examples" / f"{args.example}.dln", backend="cuda")
        b, g = model.engine, model.graph
        stream = b.stream
        R = args.reps

        def copy_gbs(nbytes: int) -> float:
            n = max(1, nbytes // 4)
            src, dst = cp.ones(n, cp.float32), cp.empty(n, cp.float32)
            reps = max(3, min(R, int(2e9 // max(nbytes, 1))))
            ms = _graph_time(cp, stream, lambda: cp.cuda.runtime.memcpyAsync(
                dst.data.ptr, src.data.ptr, n * 4, cp.cuda.runtime.memcpyDeviceToDevice, stream.ptr), reps)
            return 2 * n * 4 / (ms * 1e-3) / 1e9  # bytes read + written
        rec["copy_1gib_gbs"] = copy_gbs(args.copy_mib * 2**20)
        rec["copy_big_mib"] = args.copy_mib

        def cublas_tflops(m, n, k, ta=False, tb=False, reps=None):
            a = cp.random.standard_normal((k, m) if ta else (m, k), dtype=cp.float32)
            bb = cp.random.standard_normal((n, k) if tb else (k, n), dtype=cp.float32)
            out = cp.empty((m, n), cp.float32)
            A, B = (a.T if ta else a), (bb.T if tb else bb)
            fn = lambda: cp.matmul(A, B, out=out)  # noqa: E731
            # back to back on the stream (launch overhead included when the product is tiny);
            # also captured in a graph like the dlc kernels, where cuBLAS allows it: the faster counts
            ms = _stream_time(cp, stream, fn, reps or R)
            try:
                ms = min(ms, _graph_time(cp, stream, fn, reps or R))
            except Exception:
                pass
            return 2.0 * m * n * k / (ms * 1e-3) / 1e12, ms
        big = args.big
        rec["cublas_big"] = {"shape": big, "tflops": cublas_tflops(big, big, big, reps=5)[0]}

        per_batch = []
        for N in args.batch:
            feeds = synth_feeds(g, N, seed=0)
            model.train_step(feeds, checked=True)  # binds this batch size's buffers
            dims = b._dims(feeds)
            env = b._buffers(dims)
            rows = []
            template = {k.name: k.template for k in b.module.kernels}
            # every launch of the step as the runtime binds it (symbols, then consts such as slice offsets)
            for l, grid, ints in b._launches(set(g.nx), env, dims):
                if any(a not in env for a in l.args):
                    continue
                kargs = tuple(env[a] for a in l.args) + tuple(np.int32(v) for v in ints)
                kern = b._kernels[l.kernel]
                fn = (lambda k=kern, gr=grid, bl=tuple(l.block), a=kargs: k(gr, bl, a))
                try:
                    ms = _graph_time(cp, stream, fn, R)
                except Exception as e:
                    rows.append({"kernel": l.kernel, "error": f"{type(e).__name__}: {e}"[:200]})
                    continue
                uniq = {a: env[a].nbytes for a in l.args}
                nbytes = sum(uniq.values())
                family = OPS[l.op].family if l.op in OPS else ""
                row = {"kernel": l.kernel, "op": l.op, "family": family, "phase": l.phase,
                       "grid": grid, "block": list(l.block), "bytes": nbytes, "us": ms * 1e3,
                       "gbs": nbytes / (ms * 1e-3) / 1e9}
                if template[l.kernel] == "matmul.cu.j2":  # a product or convolution (split-K: its first launch)
                    node = l.node if OPS[g.op(l.node)].family in STORE_HOOK else next(
                        m for m in g.meta.groups[l.node][1] if OPS[g.op(m)].family in STORE_HOOK)
                    row.update(gemm=node, tflops=flops(g, node, dims) / (ms * 1e-3) / 1e12)
                    if g.op(node) == "matmul" and g.type(node).rank == 2:
                        at = g.attrs(node)
                        M, Nn = g.type(node).concrete(dims)
                        a_shape = g.type(g.operands(node)[0]).concrete(dims)
                        K = a_shape[0] if at.get("ta") else a_shape[1]
                        row.update(m=M, n=Nn, k=K, ta=bool(at.get("ta")), tb=bool(at.get("tb")))
                        try:
                            cb, cb_ms = cublas_tflops(M, Nn, K, row["ta"], row["tb"])
                            row.update(cublas_tflops=cb, cublas_us=cb_ms * 1e3, frac_cublas=row["tflops"] / cb)
                        except Exception as e:
                            row["cublas_error"] = f"{type(e).__name__}: {e}"[:200]
                rows.append(row)
            ew = sorted((r for r in rows if r.get("family") == "elementwise"), key=lambda r: -r["bytes"])[:3]
            for r in ew:
                same = copy_gbs(r["bytes"] // 2)  # a copy that reads and writes as many bytes in all
                r.update(copy_same_gbs=same, frac_copy_same=r["gbs"] / same,
                         frac_copy_1gib=r["gbs"] / rec["copy_1gib_gbs"])
            total = sum(r.get("us", 0) for r in rows if r.get("phase") == "step") + \
                sum(r.get("us", 0) for r in rows if r.get("phase") == "commit")
            per_batch.append({"batch": N, "kernels": rows, "sum_us": total,
                              "largest_elementwise": [r["kernel"] for r in ew],
                              "matmuls": [r["kernel"] for r in rows if "gemm" in r]})
        rec["batches"] = per_batch
    except Exception as e:
        rec["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        traceback.print_exc(limit=4)
    if args.json:
        Path(args.json).write_text(json.dumps(rec, indent=1, default=float) + "\n")
    print(json.dumps({k: v for k, v in rec.items() if k != "batches"}, default=float))
    for pb in rec.get("batches", []):
        print(_kernel_table(pb, rec))
    return 1 if "error" in rec else 0


def _kernel_table(pb, rec) -> str:
    lines = [f"{rec.get('example')} batch {pb['batch']}: sum of kernel times {pb['sum_us']:.1f} us "
             f"(each kernel alone, launch gaps left out)"]
    lines.append(f"  {'kernel':<34} {'us':>8} {'GB/s':>8} {'%copy1G':>8} {'%copySame':>9} "
                 f"{'TFLOP/s':>8} {'%cuBLAS':>8}")
    shown = [r for r in pb["kernels"] if r.get("kernel") in pb["largest_elementwise"] + pb["matmuls"]]
    top = sorted((r for r in pb["kernels"] if "us" in r), key=lambda r: -r["us"])[:5]
    for r in shown + [r for r in top if r not in shown]:
        if "error" in r:
            lines.append(f"  {r['kernel']:<34} FAILED {r['error']}")
            continue

        def pct(k):
            return f"{100 * r[k]:.1f}" if k in r else "-"
        tf = f"{r['tflops']:.3f}" if "tflops" in r else "-"
        lines.append(f"  {r['kernel'][:34]:<34} {r['us']:>8.2f} {r['gbs']:>8.1f} {pct('frac_copy_1gib'):>8} "
                     f"{pct('frac_copy_same'):>9} {tf:>8} {pct('frac_cublas'):>8}")
    return "\n".join(lines)


# -- summary ----------------------------------------------------------------------------------
def _load_jsonl(path: Path) -> list:
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
    return out


def speed_table(recs: list) -> list[str]:
    """Rows per (example, batch): ms per step per implementation, and the ratios the issue asks for."""
    by, prec = {}, {}   # fp32 records; (example, batch, impl, precision) -> a tf32 or bf16 record
    for r in recs:
        if r.get("kind") == "step" and not r.get("warm_only"):
            p = r.get("precision", "fp32")
            if p == "fp32":
                by[(r["example"], r["batch"], r["impl"])] = r
            else:
                prec[(r["example"], r["batch"], r["impl"], p)] = r
    if not by and not prec:
        return ["  (no speed measurements)"]
    examples = []
    for (e, b, _i) in by:
        if (e, b) not in examples:
            examples.append((e, b))
    order = ["mlp", "logreg", "xor", "deep_mlp", "lenet", "inception", "adding_lstm"]
    examples.sort(key=lambda eb: (eb[1], order.index(eb[0]) if eb[0] in order else 99, eb[0]))

    def cell(e, b, impl, key):
        r = by.get((e, b, impl))
        if r is None:
            return "-"
        if "error" in r:
            return "skip" if _skipped(r) else "FAIL"
        v = r.get(key)
        return f"{v:.3f}" if isinstance(v, (int, float)) else "-"

    def ratio(e, b, num, den, key):
        rn, rd = by.get((e, b, num)), by.get((e, b, den))
        if not rn or not rd or "error" in rn or "error" in rd or not rd.get(key):
            return "-"
        return f"{rn[key] / rd[key]:.2f}"
    out = []
    for key, title in (("step_ms", "step_ms: API step, host batch in, loss out (ms, median)"),
                       ("dev_ms", "dev_ms: steps queued back to back, batch on the device (ms, median)")):
        out.append(title)
        out.append(f"  {'example':<10} {'batch':>5} " + " ".join(f"{i:>10}" for i in IMPLS) +
                   f" {'eager/graph':>11} {'ro/graph':>9} {'eager/dlc':>9}")
        for e, b in examples:
            out.append(f"  {e:<10} {b:>5} " + " ".join(f"{cell(e, b, i, key):>10}" for i in IMPLS) +
                       f" {ratio(e, b, 'eager', 'dlc-graph', key):>11} {ratio(e, b, 'compile-ro', 'dlc-graph', key):>9}"
                       f" {ratio(e, b, 'eager', 'dlc', key):>9}")
        out.append("")
    met = [(e, b) for e, b in examples
           if ratio(e, b, "eager", "dlc-graph", "step_ms") not in ("-",)]
    if met:
        ok = [eb for eb in met if float(ratio(*eb, "eager", "dlc-graph", "step_ms")) >= 1.0]
        out.append(f"target (dlc-graph at least as fast as eager, step_ms): met on {len(ok)} of {len(met)} "
                   f"(example, batch) pairs" + ("" if len(ok) == len(met) else
                                                 "; not met: " + ", ".join(f"{e}@{b}" for e, b in met if (e, b) not in ok)))
    if prec:
        out += precision_table(by, prec)
    for r in [*by.values(), *prec.values()]:
        if "error" in r and not _skipped(r):
            at = f" at {r['precision']}" if r.get("precision", "fp32") != "fp32" else ""
            out.append(f"FAILED {r['impl']} {r['example']} batch {r['batch']}{at}: {r['error']}")
    skipped = [r for r in [*by.values(), *prec.values()] if _skipped(r)]
    if skipped:  # not run (the budget ran out), which is not a failure: one line
        out.append(f"skipped, no time left in the budget ({len(skipped)}): " +
                   ", ".join(f"{r['impl']} {r['example']}@{r['batch']}"
                             + (f" {r['precision']}" if r.get("precision", "fp32") != "fp32" else "") for r in skipped))
    return out


def precision_table(by: dict, prec: dict) -> list[str]:
    """step_ms of dlc-graph and PyTorch eager at each precision (fp32 from the main table; PyTorch's
    tf32: allow_tf32, its bf16: autocast), and eager/dlc-graph at each."""
    rows = []
    for (e, b, _i, _p) in prec:
        if (e, b) not in rows:
            rows.append((e, b))
    rows.sort(key=lambda eb: (eb[1], eb[0]))

    def rec(e, b, impl, p):
        return by.get((e, b, impl)) if p == "fp32" else prec.get((e, b, impl, p))

    def cell(r):
        if r is None:
            return "-"
        if "error" in r:
            return "skip" if _skipped(r) else "FAIL"
        return f"{r['step_ms']:.3f}" if isinstance(r.get("step_ms"), (int, float)) else "-"

    def ratio(e, b, p):
        n, d = rec(e, b, "eager", p), rec(e, b, "dlc-graph", p)
        ok = n and d and "error" not in n and "error" not in d and d.get("step_ms")
        return f"{n['step_ms'] / d['step_ms']:.2f}" if ok else "-"
    heads = [f"{i}@{p}" for i in PRECISION_IMPLS for p in PRECISIONS]
    out = ["precision: step_ms (ms, median); PyTorch at tf32 with allow_tf32, at bf16 under autocast "
           "(docs/precision.md)",
           f"  {'example':<10} {'batch':>5} " + " ".join(f"{h:>15}" for h in heads)
           + " " + " ".join(f"{'eager/graph@' + p:>17}" for p in PRECISIONS)]
    for e, b in rows:
        out.append(f"  {e:<10} {b:>5} " + " ".join(f"{cell(rec(e, b, i, p)):>15}" for i in PRECISION_IMPLS
                                                   for p in PRECISIONS)
                   + " " + " ".join(f"{ratio(e, b, p):>17}" for p in PRECISIONS))
    out.append("")
    return out


def _skipped(r: dict) -> bool:
    """A configuration gpu_check.sh did not start (no time left): its record's error says so."""
    return str(r.get("error", "")).startswith("skipped")


def cmd_summary(args) -> int:
    work = Path(args.work)
    lines = []
    env = {}
    if (work / "env.json").exists():
        env = json.loads((work / "env.json").read_text())
    lines.append(f"dlc GPU check  {env.get('date', datetime.date.today().isoformat())}")
    cu = env.get("cupy") if isinstance(env.get("cupy"), dict) else {}
    th = env.get("torch") if isinstance(env.get("torch"), dict) else {}
    smi = (work / "nvidia-smi.txt").read_text().strip() if (work / "nvidia-smi.txt").exists() else "no nvidia-smi"
    lines.append(f"GPU: {cu.get('gpu') or th.get('gpu') or 'none found'}  (nvidia-smi: {smi.splitlines()[0] if smi else '-'})")
    lines.append(f"python {env.get('python')}  numpy {env.get('numpy')}  cupy {cu.get('version', env.get('cupy'))} "
                 f"(CUDA runtime {cu.get('cuda_runtime', '-')}, driver API {cu.get('cuda_driver', '-')})  "
                 f"torch {th.get('version', env.get('torch'))} (CUDA {th.get('cuda', '-')}, cuDNN {th.get('cudnn', '-')}, "
                 f"triton {th.get('triton', '-')})  lark {env.get('lark')}")
    lines.append("")
    status = work / "status.tsv"
    if status.exists():
        lines.append("checks")
        for row in status.read_text().splitlines():
            parts = row.split("\t")
            if len(parts) >= 3:
                lines.append(f"  {parts[0]:<12} {parts[1]:<34} {parts[2]:<8} {' '.join(parts[3:])[:150]}")
        lines.append("")
    acc = work / "accuracy.txt"
    if acc.exists():
        lines.append("training run (examples/mlp.dln, held-out accuracy)")
        lines += ["  " + l for l in acc.read_text().splitlines()]
        lines.append("")
    lines += speed_table(_load_jsonl(work / "speed.jsonl"))
    lines.append("")
    kj = work / "kernels.json"
    if kj.exists():
        try:
            rec = json.loads(kj.read_text())
            if "error" in rec:
                lines.append(f"kernels: FAILED {rec['error']}")
            lines.append(f"ceilings: device-to-device copy of {rec.get('copy_big_mib', 1024)} MiB "
                         f"{rec.get('copy_1gib_gbs', float('nan')):.0f} GB/s "
                         f"(read+write); cuBLAS fp32 {rec.get('cublas_big', {}).get('shape')}^3 "
                         f"{rec.get('cublas_big', {}).get('tflops', float('nan')):.1f} TFLOP/s")
            for pb in rec.get("batches", []):
                lines.append(_kernel_table(pb, rec))
        except Exception as e:
            lines.append(f"kernels: cannot read kernels.json ({e})")
    text = "\n".join(lines).rstrip() + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text, end="")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="GPU measurements for dlc (see the module docstring)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("deps", help="install what this python lacks from a wheels folder, offline")
    p.add_argument("--wheels", default=str(ROOT / "gpu_wheels"), help="the folder gpu_prepare.sh filled")
    p.add_argument("--site", required=True, help="install here (put it first on PYTHONPATH)")
    p.add_argument("--repo", default=str(ROOT), help="the working tree dlc must come from")
    p = sub.add_parser("env")
    p.add_argument("--json")
    p = sub.add_parser("step")
    p.add_argument("--impl", choices=IMPLS, required=True)
    p.add_argument("--example", required=True)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--blocks", type=int, default=7)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warm-only", action="store_true", help="compile and run a few steps only (fills caches)")
    p.add_argument("--device", default="cuda", help="PyTorch's device (cpu: a dry run of the script)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="fp32 (default), tf32 (PyTorch: allow_tf32) or bf16 (PyTorch: autocast); docs/precision.md")
    p.add_argument("--eager-optimizer", action="store_true", help="compile: leave the optimizer step eager")
    p.add_argument("--json", help="append the record to this file (JSON lines)")
    p = sub.add_parser("kernels")
    p.add_argument("--example", default="mlp")
    p.add_argument("--batch", type=int, nargs="+", default=[1024, 32768])
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--big", type=int, default=4096)
    p.add_argument("--copy-mib", type=int, default=1024, help="the large device copy, in MiB (the %%copy1G column)")
    p.add_argument("--json")
    p = sub.add_parser("summary")
    p.add_argument("--work", required=True)
    p.add_argument("--out")
    args = ap.parse_args(argv)
    return {"deps": cmd_deps, "env": cmd_env, "step": cmd_step, "kernels": cmd_kernels, "summary": cmd_summary}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
