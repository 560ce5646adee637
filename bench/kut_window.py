"""A window of one kvm-unit-tests subtest: boot it, run to ``--start``
instructions (past the test library's page-table build, into the subtest),
then measure (or profile with cProfile) the next ``--insns`` instructions.

Prints the window's CPU seconds and VMRUNs (round trips) per CPU second.
Usage::

    python3 bench/kut_window.py KUT_BUILD_DIR SUBTEST [--flat svm.flat]
        [--start 165000000] [--insns 20000000] [--env FILE] [--profile FILE]

``--env`` is kvm-unit-tests' environment module (``NR_CPUS=2`` and
``MEMSIZE=4096`` lines); a temporary one is written if it is not given.
latency_run_exit's loop starts at ~163 M instructions (docs/PERFORMANCE.md).
"""
import argparse
import cProfile
import io
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kut", help="kvm-unit-tests build directory (holds x86/svm.flat)")
    ap.add_argument("subtest")
    ap.add_argument("--flat", default="svm.flat")
    ap.add_argument("--start", type=int, default=165_000_000)
    ap.add_argument("--insns", type=int, default=20_000_000)
    ap.add_argument("--env", default=None)
    ap.add_argument("--profile", default=None, help="write cProfile statistics of the window here")
    args = ap.parse_args()
    from svmsim.machine import Machine, MachineConfig
    env = args.env
    if env is None:
        env = tempfile.NamedTemporaryFile("w", suffix=".env", delete=False).name
        pathlib.Path(env).write_text("NR_CPUS=2\nMEMSIZE=4096\n")
    m = Machine(MachineConfig(mem_size="4g", smp=2, serial_out=None))
    m.load_kernel(str(pathlib.Path(args.kut) / "x86" / args.flat), args.subtest, [(env, "")])
    m.uart.out = io.BytesIO()
    m.run(max_insns=args.start)
    vmruns = sum(c.svm.vmruns for c in m.cpus)
    prof = cProfile.Profile() if args.profile else None
    t0 = time.process_time()
    if prof:
        prof.enable()
    result = m.run(max_insns=args.insns)
    if prof:
        prof.disable()
        prof.dump_stats(args.profile)
    cpu = time.process_time() - t0
    n = sum(c.svm.vmruns for c in m.cpus) - vmruns
    print(f"{args.subtest}: {args.insns} instructions after {args.start}: {cpu:.2f} s CPU, "
          f"{n} VMRUNs, {n / cpu:.0f} per CPU second ({result.kind})")


if __name__ == "__main__":
    main()
