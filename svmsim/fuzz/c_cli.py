"""Campaign ``cli``: random command lines for ``svmsim`` (run, launch, init,
fuzz --replay) as a careless user types them: sizes such as ``infG``,
``1e30G``, ``-5M`` or ``512G``; ``nan``/``inf``/negative timeouts and
counts; non-UTF-8 bytes in --append, the kernel and module paths (handed
over as the OS hands argv: surrogate-escaped); output files in missing
directories; kernels that are missing, empty, directories or garbage;
modules larger than RAM (sparse files: nothing may read them whole).

The command line is executed in this process by ``svmsim.cli.main`` (the
code behind ``python3 -m svmsim``) in a scratch directory.  Invariant
(issue 13, finding 2): status 2 with exactly one line on stderr for a user
mistake, otherwise a run's status, never status 70 or a traceback; each
run is bounded by --max-insns and --timeout appended last."""
import contextlib
import io
import os
import tempfile

from .driver import Campaign, Failure, campaign
from . import kernels as K

SIZES = ["128M", "16M", "2M", "1M", "0", "-5M", "infG", "1e30G", "nan", "512G", "4G", "3.5G", "64k",
         "1T", "0x1000000", "16", "G", "", "1e3M", "16MB", "16 M", "99999999999999999999"]
NUMBERS = ["0", "1", "-1", "nan", "inf", "-inf", "1e308", "0x10", "3.5", "", "abc", "99999999999999999999"]
CPUS = ["epyc", "epyc-genoa", "max", "amd64-base", "max,+svm,-npt", "epyc,-svm", "nope", "", "max,+",
        "epyc,+sev", "host"]
WORDS = [b"a", b"\xff", b"\xc3\x28", b"x\x00y", b"%s%n", b" ", b"\xed\xa0\x80", b"console=ttyS0", b"-q", b"--"]


def _path(rnd, kind: str) -> bytes:
    """A path in the scratch directory (relative), or a bad one."""
    return rnd.choice([kind.encode(), b"sub/" + kind.encode(), b"nonexistent-dir/" + kind.encode(),
                       b"missing/" + kind.encode(), b".", b"", b"k\xff" + kind.encode(), b"/dev/null"])


@campaign
class Cli(Campaign):
    name = "cli"
    description = "random svmsim command lines (sizes, numbers, paths, non-UTF-8 bytes, huge modules)"

    def generate(self, rnd):
        cmd = rnd.choice(("run", "run", "run", "run", "launch", "init", "fuzz"))
        argv = [cmd.encode()]
        if cmd == "run":
            argv.append(rnd.choice([b"kernel", b"kernel", b"empty", b"garbage", b".", b"missing",
                                    b"k\xff.bin", b"huge", b"/dev/null", b""]))
            for _ in range(rnd.randrange(6)):
                opt = rnd.choice(["-m", "--smp", "--cpu", "--append", "--module", "--initrd", "--timeout",
                                  "--max-insns", "--serial-out", "--serial-in", "--trace", "--trace-file",
                                  "--trace-format", "--device", "--report", "-q", "--exit-coverage",
                                  "--trace-file-filter", "--profile", "--debug", "--bogus"])
                argv.append(opt.encode())
                if opt == "-m":
                    argv.append(rnd.choice(SIZES).encode())
                elif opt in ("--smp", "--timeout", "--max-insns"):
                    argv.append(rnd.choice(NUMBERS + ["2", "65", "1000"]).encode())
                elif opt == "--cpu":
                    argv.append(rnd.choice(CPUS).encode())
                elif opt == "--append":
                    argv.append(b" ".join(rnd.choice(WORDS) for _ in range(rnd.randrange(4))))
                elif opt == "--module":
                    argv.append(rnd.choice([b"mod", b"huge", b"mod \xff arg", b"missing", b"k\xffmod", b"."]))
                elif opt == "--initrd":
                    argv.append(rnd.choice([b"mod", b"huge", b"missing"]))
                elif opt in ("--serial-out", "--trace-file", "--profile"):
                    argv.append(_path(rnd, "out"))
                elif opt == "--serial-in":
                    argv.append(rnd.choice([b"mod", b"missing", b"nonexistent-dir/in", b"."]))
                elif opt in ("--trace", "--trace-file-filter"):
                    argv.append(rnd.choice([b"all", b"exceptions,vmexit", b"bogus", b"", b"smm,,dma"]))
                elif opt == "--trace-format":
                    argv.append(rnd.choice([b"jsonl", b"perfetto", b"xml"]))
                elif opt == "--device":
                    argv.append(rnd.choice([b"edu", b"pc-testdev", b"nope", b""]))
        elif cmd == "launch":
            argv += [b"--ovmf", rnd.choice([b"missing", b"garbage", b"empty", b"."]),
                     b"--mode", rnd.choice([b"sev", b"snp", b"bogus"])]
            if rnd.random() < 0.5:
                argv += [b"--policy", rnd.choice([b"0x1", b"nan", b"-1", b"0xffffffffffffffffff"])]
        elif cmd == "init":
            argv.append(rnd.choice([b"newdir", b"nonexistent-dir/x", b"garbage", b"", b"d\xff"]))
        else:
            argv += [b"--replay", rnd.choice([b"garbage", b"empty", b"missing", b"kernel"])]
        return {"argv": argv, "mem_huge": rnd.choice((0, 3 << 30))}

    def execute(self, inp):
        from ..cli import main
        old = os.getcwd()
        with tempfile.TemporaryDirectory(prefix="svmsim-fuzz-cli-") as d:
            os.chdir(d)
            try:
                with open("kernel", "wb") as f:
                    f.write(K.kernel(K.Code().out8(0x80, 1).exit(0)))
                open("empty", "wb").close()
                with open("garbage", "wb") as f:
                    f.write(bytes(range(256)) * 40)
                with open("mod", "wb") as f:
                    f.write(b"module bytes")
                os.mkdir("sub")
                with open("huge", "wb") as f:
                    f.truncate(inp["mem_huge"] or 200 << 20)         # sparse: nothing may read it whole
                with open(os.fsdecode(b"k\xff.bin"), "wb") as f:
                    f.write(K.kernel(K.Code().exit(0)))
                argv = [os.fsdecode(a) for a in inp["argv"]]
                if argv[0] == "run":
                    argv += ["--max-insns", "200000", "--timeout", "20"]
                out, err = io.TextIOWrapper(io.BytesIO(), write_through=True), io.StringIO()
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    try:
                        status = main(argv)
                    except SystemExit as e:
                        status = e.code
            finally:
                os.chdir(old)
        lines = err.getvalue().splitlines()
        if status == 70 or any(line.startswith("Traceback") for line in lines):
            raise Failure(f"status {status}: {lines[-1] if lines else ''}")
        if not isinstance(status, int):
            raise Failure(f"exit status {status!r} is not a number")
        user = [x for x in lines if x.strip()]
        if status == 2 and not any("shutdown" in x for x in user) and len(user) != 1:
            raise Failure(f"status 2 with {len(user)} lines on stderr: {user[:3]}")
        return f"{argv[0]} status {status}"
