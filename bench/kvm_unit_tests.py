"""kvm-unit-tests' SVM suites on svmsim and on QEMU TCG, side by side.

    python3 bench/kvm_unit_tests.py BUILD_DIR [--per-subtest] [--jobs 2] [--timeout 90s]

BUILD_DIR is a built kvm-unit-tests tree (``./configure --arch=x86_64 && make``).
Each SVM stanza of x86/unittests.cfg ([svm], [svm_unsupported_instruction_intercept_test],
[svm_no_npt], [svm_pause_filter], [svm_npt]) runs through kvm-unit-tests' own
runner, ``./run_tests.sh STANZA``, once with ``QEMU=svmsim-qemu`` (this checkout)
and once with ``qemu-system-x86_64``, both with ACCEL=tcg; ``--jobs`` svmsim
stanzas run at a time.  With ``--per-subtest`` every subtest boots on its own
through ``x86/run`` with its stanza's options and ``-append SUBTEST`` (a
failing subtest then cannot stop the ones after it).

Per subtest the result is PASS, FAIL (a FAIL line), SKIP (only SKIP lines),
DIED (its output stops: abort, unhandled exception, triple fault, timeout)
or - (not reached).  The table goes to stdout as Markdown, with the runner's
verdict and wall time per stanza and the kvm-unit-tests commit.
"""
import argparse
import concurrent.futures
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
STANZAS = ("svm", "svm_unsupported_instruction_intercept_test", "svm_no_npt",
           "svm_pause_filter", "svm_npt")


def parse_cfg(build):
    """{stanza: {key: value}} for the SVM stanzas of x86/unittests.cfg."""
    out, cur = {}, None
    for line in (build / "x86" / "unittests.cfg").read_text().splitlines():
        m = re.match(r"\[(\w+)\]", line)
        if m:
            cur = out.setdefault(m.group(1), {}) if m.group(1) in STANZAS else None
        elif cur is not None and "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            cur[key.strip()] = value.strip().strip('"')
    return out


def subtests(build, kernel):
    """Subtest names of svm.flat / svm_npt.flat, in the order the kernel runs them."""
    src = {"svm.flat": "svm_tests.c", "svm_npt.flat": "svm_npt.c"}[kernel]
    text = (build / "x86" / src).read_text()
    table = text[re.search(r"struct svm_test \w+\[\] = \{", text).end():]
    table = table[:table.index("\n};")]
    names = re.findall(r'^\s*\{\s*"([^"]+)"|TEST\((\w+)\)|NPT_V\d_TEST\((\w+)', table, re.M)
    return [next(n for n in group if n) for group in names]


def wanted(name, filters):
    """svm.c's test_wanted(): spaces become '_', '-glob' excludes, a positive glob selects."""
    import fnmatch
    clean = name.replace(" ", "_")
    positive = [f for f in filters if not f.startswith("-")]
    if any(fnmatch.fnmatchcase(clean, f[1:]) for f in filters if f.startswith("-")):
        return False
    return not positive or any(fnmatch.fnmatchcase(clean, f) for f in positive)


def results(log, names):
    """{subtest: PASS/FAIL/SKIP/DIED} from one boot's output."""
    out, cur, lines = {}, None, []

    def close(done):
        if cur is None:
            return
        text = "\n".join(lines)
        if re.search(r"^FAIL: ", text, re.M):
            out[cur] = "FAIL"
        elif not done:
            out[cur] = "DIED"
        elif re.search(r"^(PASS|XFAIL): ", text, re.M):
            out[cur] = "PASS"
        else:
            out[cur] = "SKIP" if re.search(r"^SKIP: ", text, re.M) else "PASS"

    for line in log.splitlines():
        m = re.match(r"SVM test: (.+)", line)
        skip = re.match(r"SKIP: (.+) \(not supported\)", line)
        if m or skip:
            close(True)
            cur, lines = (m or skip).group(1), []
            if skip:
                out[cur], cur = "SKIP", None
            continue
        if line.startswith("SUMMARY:"):
            close(True)
            cur = None
        elif cur is not None:
            lines.append(line)
    close(False)
    return {n: out.get(n, "-") for n in names}


def svmsim_qemu(tmp, nice):
    """An executable svmsim-qemu running this checkout (the runner needs a path)."""
    path = tmp / "svmsim-qemu"
    prefix = f"nice -n {nice} " if nice else ""
    path.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {prefix}{sys.executable} -m svmsim.cli_qemu \"$@\"\n")
    path.chmod(0o755)
    return str(path)


def run_stanza(build, stanza, qemu, timeout, logdir):
    env = dict(os.environ, QEMU=qemu, ACCEL="tcg", TIMEOUT=timeout, unittest_log_dir=str(logdir))
    t = time.monotonic()
    p = subprocess.run(["./run_tests.sh", stanza], cwd=build, env=env, capture_output=True, text=True)
    verdict = re.sub(r"\x1b\[[0-9;]*m", "", p.stdout).strip().splitlines()
    log = (logdir / f"{stanza}.log").read_text(errors="replace") if (logdir / f"{stanza}.log").exists() else ""
    return {"verdict": verdict[-1] if verdict else p.stderr.strip()[-200:], "log": log,
            "seconds": time.monotonic() - t}


def run_subtest(build, cfg, name, qemu, timeout):
    """One subtest booted alone through x86/run, as run_tests.sh would boot its stanza."""
    args = ["./x86/run", f"x86/{cfg['file']}", "-smp", cfg.get("smp", "1"), "-append", name.replace(" ", "_")]
    args += cfg.get("qemu_params", "").split()
    env = dict(os.environ, QEMU=qemu, ACCEL="tcg", TIMEOUT=timeout, TESTNAME=name)
    t = time.monotonic()
    p = subprocess.run(args, cwd=build, env=env, capture_output=True, text=True)
    return {"result": results(p.stdout, [name])[name], "seconds": time.monotonic() - t}


def per_stanza(build, cfgs, engines, jobs, timeout, tmp):
    out = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futs = {(engine, s): pool.submit(run_stanza, build, s, qemu, timeout, tmp / f"logs-{engine.replace(' ', '_')}-{s}")
                for engine, qemu in engines.items() for s in cfgs}
        for key, fut in futs.items():
            out[key] = fut.result()
    return out


def per_subtest(build, cfgs, engines, jobs, timeout):
    out = {}
    jobs_list = []
    for s, cfg in cfgs.items():
        names = [n for n in subtests(build, cfg["file"]) if wanted(n, cfg.get("test_args", "").split())]
        for engine, qemu in engines.items():
            for n in names:
                jobs_list.append((engine, s, n, qemu, cfg))
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        futs = {(e, s, n): pool.submit(run_subtest, build, cfg, n, q, timeout) for e, s, n, q, cfg in jobs_list}
        for (e, s, n), fut in futs.items():
            r = fut.result()
            print(f"{e}\t{s}\t{n}\t{r['result']}\t{r['seconds']:.0f} s", file=sys.stderr, flush=True)
            entry = out.setdefault((e, s), {"results": {}, "seconds": 0.0, "verdict": "one boot per subtest"})
            entry["results"][n] = r["result"]
            entry["seconds"] += r["seconds"]
    return out


def table(build, cfgs, runs, engines):
    head = subprocess.run(["git", "-C", str(build), "rev-parse", "--short=12", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    if not head and (build / "build-head").exists():
        head = (build / "build-head").read_text().strip()
    names = list(engines)
    lines = [f"kvm-unit-tests {head}; engines: " + ", ".join(names), ""]
    totals = {}
    for s, cfg in cfgs.items():
        all_names = subtests(build, cfg["file"])
        sel = [n for n in all_names if wanted(n, cfg.get("test_args", "").split())]
        res = {e: runs[(e, s)].get("results") or results(runs[(e, s)]["log"], sel) for e in names}
        lines.append(f"### [{s}] ({cfg['file']}, smp {cfg.get('smp', '1')}, {cfg.get('qemu_params', '')})")
        lines.append("")
        lines.append("| " + " | ".join(["subtest"] + [f"{e}" for e in names]) + " |")
        lines.append("|" + "---|" * (len(names) + 1))
        for n in sel:
            lines.append("| " + " | ".join([n] + [res[e][n] for e in names]) + " |")
        for e in names:
            counts = {k: sum(1 for v in res[e].values() if v == k) for k in ("PASS", "FAIL", "SKIP", "DIED", "-")}
            totals.setdefault(e, {k: 0 for k in counts})
            for k, v in counts.items():
                totals[e][k] += v
            r = runs[(e, s)]
            lines.append(f"\n{e}: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v)
                         + f"; runner: {r['verdict']}; {r['seconds']:.0f} s")
        lines.append("")
    lines.append("### Totals")
    lines.append("")
    for e, c in totals.items():
        lines.append(f"- {e}: " + ", ".join(f"{v} {k}" for k, v in c.items() if v))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("build", type=pathlib.Path, help="a built kvm-unit-tests tree")
    ap.add_argument("--stanza", action="append", choices=STANZAS, help="only these stanzas")
    ap.add_argument("--per-subtest", action="store_true", help="one boot per subtest")
    ap.add_argument("--jobs", type=int, default=2, help="runs at a time (default 2)")
    ap.add_argument("--timeout", default="90s", help="the runner's TIMEOUT (default its own 90s)")
    ap.add_argument("--nice", type=int, default=19, help="nice level of the svmsim runs")
    ap.add_argument("--no-qemu", action="store_true", help="svmsim only")
    ap.add_argument("--no-svmsim", action="store_true", help="QEMU TCG only")
    args = ap.parse_args(argv)
    build = args.build.resolve()
    if not (build / "run_tests.sh").exists() or not (build / "x86" / "svm.flat").exists():
        ap.error(f"{build}: not a built kvm-unit-tests tree (x86/svm.flat missing)")
    cfgs = parse_cfg(build)
    cfgs = {s: cfgs[s] for s in (args.stanza or STANZAS) if s in cfgs}
    with tempfile.TemporaryDirectory(prefix="kut-bench-") as t:
        tmp = pathlib.Path(t)
        engines = {} if args.no_svmsim else {"svmsim": svmsim_qemu(tmp, args.nice)}
        if not args.no_qemu and shutil.which("qemu-system-x86_64"):
            engines["QEMU TCG"] = shutil.which("qemu-system-x86_64")
        run = per_subtest if args.per_subtest else per_stanza
        extra = () if args.per_subtest else (tmp,)
        runs = run(build, cfgs, engines, args.jobs, args.timeout, *extra)
        print(table(build, cfgs, runs, engines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
