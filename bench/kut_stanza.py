"""Where one boot of a kvm-unit-tests stanza spends its time, subtest by subtest.

    python3 bench/kut_stanza.py KUT_BUILD_DIR [--stanza svm] [--append TEXT]
        [--env FILE] [--profile GLOB --profile-dir DIR] [--echo]

Boots the stanza's kernel once, as ``run_tests.sh`` would (the same QEMU
command line through svmsim-qemu's parser: the stanza's ``-smp``,
``qemu_params`` and ``test_args`` from x86/unittests.cfg, the environment
module as ``-initrd``), and stamps every serial line as it is written with the
process CPU time, wall time, retired instructions, VMRUNs and virtual time.
svm.c prints ``SVM test: NAME`` before each subtest, so the stamps split the
boot into subtests; the table (Markdown, on stdout) gives each one's CPU
seconds, share, instructions, VMRUNs and PASS/FAIL/SKIP checks.  ``boot`` is
everything before the first subtest (the test library's set-up, the 4 GiB
nested page tables included).

``--profile GLOB`` (repeatable, fnmatch on the subtest name with spaces as
``_``) profiles those subtests with cProfile, one file per subtest in
``--profile-dir``; the others run unprofiled.  ``--append`` replaces the
stanza's test_args (e.g. to run a few subtests of it).
"""
import argparse
import cProfile
import fnmatch
import pathlib
import re
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

HEAD = re.compile(rb"SVM test: (.+)")


class Stamper:
    """A serial sink that cuts the output into segments at ``SVM test:`` lines."""

    def __init__(self, machine, profile_globs, profile_dir, echo):
        self.m, self.globs, self.dir, self.echo = machine, profile_globs, profile_dir, echo
        self.buf = b""
        self.segments = [self._segment("boot")]
        self.prof = None

    def _counters(self):
        cpus = self.m.cpus
        return {"cpu": time.process_time(), "wall": time.monotonic(),
                "insns": sum(c.retired + c.q_exec for c in cpus),
                "vmruns": sum(c.svm.vmruns for c in cpus),
                "vns": self.m.clock.now_ns}

    def _segment(self, name):
        return {"name": name, "start": self._counters(), "lines": []}

    def write(self, data):
        self.buf += bytes(data)
        while b"\n" in self.buf:
            line, _, self.buf = self.buf.partition(b"\n")
            self._line(line)
        return len(data)

    def flush(self):
        pass

    def _line(self, line):
        if self.echo:
            sys.stdout.buffer.write(line + b"\n")
            sys.stdout.flush()
        head = HEAD.match(line)
        if head:
            self._switch(head.group(1).decode(errors="replace"))
        self.segments[-1]["lines"].append(line.decode(errors="replace"))

    def _switch(self, name):
        self._stop_profile()
        self.segments.append(self._segment(name))
        clean = name.replace(" ", "_")
        if self.dir and any(fnmatch.fnmatchcase(clean, g) for g in self.globs):
            self.prof = cProfile.Profile()
            self.prof.enable()

    def _stop_profile(self):
        if self.prof is not None:
            self.prof.disable()
            name = self.segments[-1]["name"].replace(" ", "_")
            self.prof.dump_stats(str(pathlib.Path(self.dir) / f"{name}.prof"))
            self.prof = None

    def finish(self):
        if self.buf:
            self._line(self.buf)
            self.buf = b""
        self._stop_profile()
        end = self._counters()
        for seg, nxt in zip(self.segments, self.segments[1:] + [{"start": end}]):
            seg["d"] = {k: nxt["start"][k] - seg["start"][k] for k in end}


def checks(lines):
    return {k: sum(1 for ln in lines if ln.startswith(k + ":")) for k in ("PASS", "FAIL", "SKIP")}


def table(segments, title):
    total = sum(s["d"]["cpu"] for s in segments) or 1.0
    out = [title, "", "| subtest | CPU s | % | wall s | M insns | VMRUNs | virtual ms | checks |",
           "|---|---:|---:|---:|---:|---:|---:|---|"]
    for s in sorted(segments, key=lambda s: -s["d"]["cpu"]):
        d, c = s["d"], checks(s["lines"])
        marks = " ".join(f"{v} {k}" for k, v in c.items() if v)
        out.append(f"| {s['name']} | {d['cpu']:.2f} | {100 * d['cpu'] / total:.1f} | {d['wall']:.2f} | "
                   f"{d['insns'] / 1e6:.1f} | {d['vmruns']} | {d['vns'] / 1e6:.1f} | {marks} |")
    all_lines = [ln for s in segments for ln in s["lines"]]
    c = checks(all_lines)
    out.append("")
    out.append(f"total: {total:.1f} s CPU, {sum(s['d']['wall'] for s in segments):.1f} s wall, "
               f"{sum(s['d']['insns'] for s in segments) / 1e6:.0f} M instructions; "
               + ", ".join(f"{v} {k}" for k, v in c.items()))
    summary = [ln for ln in all_lines if ln.startswith("SUMMARY")]
    if summary:
        out.append(summary[-1])
    return "\n".join(out)


def qemu_argv(build, cfg, append, env):
    argv = ["-kernel", str(build / "x86" / cfg["file"]), "-smp", cfg.get("smp", "1"),
            "-append", append, "-initrd", env, "-device", "pc-testdev",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x4", "-serial", "stdio"]
    return argv + cfg.get("qemu_params", "").split()


def main(argv=None):
    from kvm_unit_tests import parse_cfg
    from svmsim import cli_qemu
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("build", type=pathlib.Path, help="a built kvm-unit-tests tree")
    ap.add_argument("--stanza", default="svm")
    ap.add_argument("--append", default=None, help="instead of the stanza's test_args")
    ap.add_argument("--env", default=None, help="environment module (NR_CPUS=2, MEMSIZE=4096)")
    ap.add_argument("--profile", action="append", default=[], metavar="GLOB")
    ap.add_argument("--profile-dir", default=None)
    ap.add_argument("--echo", action="store_true", help="copy the serial output to stdout")
    args = ap.parse_args(argv)
    build = args.build.resolve()
    cfg = parse_cfg(build)[args.stanza]
    env = args.env
    if env is None:
        import tempfile
        env = tempfile.NamedTemporaryFile("w", suffix=".env", delete=False).name
        pathlib.Path(env).write_text("NR_CPUS=2\nMEMSIZE=4096\n")
    append = cfg.get("test_args", "") if args.append is None else args.append
    m = cli_qemu.build(cli_qemu.parse(qemu_argv(build, cfg, append, env)))
    if args.profile and not args.profile_dir:
        ap.error("--profile needs --profile-dir")
    stamper = Stamper(m, args.profile, args.profile_dir, args.echo)
    m.uart.out = stamper
    result = m.run()
    stamper.finish()
    print(table(stamper.segments, f"[{args.stanza}] -append '{append}': {result.kind} ({result.reason})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
