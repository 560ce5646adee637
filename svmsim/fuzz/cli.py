"""``svmsim fuzz CAMPAIGN --time S --workers N``: run a fuzzing campaign
(docs/RELIABILITY.md).  Exit status 0 when no input failed, 1 when some did
(their reproducers are in --out), 2 for a usage mistake."""
import json
import os
import sys

NAMES = ("loader", "cli", "insns", "vmcb", "sev-api", "sev-mailbox", "sev-isolation")


def add_parser(sub, common):
    f = sub.add_parser("fuzz", parents=[common], help="run a fuzzing campaign against svmsim "
                       "(or, with vmcb --kernel, against your hypervisor kernel)")
    f.add_argument("campaign", nargs="?", choices=NAMES + ("all",),
                   help="the campaign (all: each in turn, --time each)")
    f.add_argument("--time", type=float, default=60.0, metavar="S", help="seconds to run (default 60)")
    f.add_argument("--workers", type=int, default=1, metavar="N",
                   help="worker processes (default 1; 0 = one per local core)")
    f.add_argument("--seed", type=int, default=None, help="first seed (default: random; printed)")
    f.add_argument("--out", default="fuzz-out", metavar="DIR",
                   help="where reproducers and report.json go (default ./fuzz-out)")
    f.add_argument("--ray", default=None, metavar="ADDRESS",
                   help="run the workers as tasks on this Ray cluster ('auto', 'ray://HOST:10001', "
                        "or 'local' for a private local instance); needs pip install 'svmsim[ray]'")
    f.add_argument("--atheris", action="store_true",
                   help="coverage-guided: each worker runs atheris (libFuzzer), whose input bytes "
                        "drive the campaign's choices (pip install atheris)")
    f.add_argument("--kernel", default=None, metavar="FILE",
                   help="vmcb: boot this hypervisor kernel with each random VMCB as Multiboot "
                        "module 0 and the guest code as module 1, instead of svmsim's own host stub")
    f.add_argument("--max-inputs", type=int, default=None, metavar="N", help="stop after N inputs")
    f.add_argument("--rss-mib", type=int, default=1536, metavar="MIB",
                   help="a worker whose RSS passes this after an input fails (default 1536)")
    f.add_argument("--replay", default=None, metavar="FILE", help="run one saved reproducer again")
    f.add_argument("--list", action="store_true", help="list the campaigns")
    return f


def cmd_fuzz(args) -> int:
    from ..errors import ConfigError
    from . import driver
    if args.list:
        for name, cls in driver.load_all().items():
            print(f"{name:14} {cls.description}")
        return 0
    if args.replay:
        try:
            v = driver.replay(args.replay)
        except (OSError, ValueError, KeyError) as e:
            raise ConfigError(f"--replay {args.replay}: cannot read the reproducer ({e})") from None
        if v.failure:
            print(v.detail or v.failure, file=sys.stderr)
            print(f"svmsim fuzz: FAIL: {v.failure}", file=sys.stderr)
            return 1
        print(f"svmsim fuzz: passes now: {v.outcome}", file=sys.stderr)
        return 0
    if not args.campaign:
        raise ConfigError("fuzz: name a campaign (or --list)")
    if not (args.time > 0 and args.time < 1e9):
        raise ConfigError("fuzz: --time must be a positive number of seconds")
    workers = args.workers or os.cpu_count() or 1
    if workers < 1 or workers > 1024:
        raise ConfigError("fuzz: --workers must be between 0 and 1024")
    options = {}
    if args.kernel:
        if args.campaign != "vmcb":
            raise ConfigError("fuzz: --kernel is for the vmcb campaign")
        if not os.path.isfile(args.kernel):
            raise ConfigError(f"fuzz: --kernel {args.kernel}: not a file")
        options["kernel"] = os.path.abspath(args.kernel)
    if args.atheris and args.ray:
        raise ConfigError("fuzz: --atheris runs local workers; it does not combine with --ray")
    names = NAMES if args.campaign == "all" else (args.campaign,)
    reports = []
    for name in names:
        rep = driver.run_campaign(name, args.time, workers, seed=args.seed,
                                  out_dir=os.path.join(args.out, name), options=options,
                                  ray_address=args.ray, rss_limit_mib=args.rss_mib,
                                  max_inputs=args.max_inputs, atheris=args.atheris)
        print(driver.format_report(rep), file=sys.stderr, flush=True)
        reports.append(rep)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "report.json")
    with open(path, "w") as f:
        json.dump(reports if len(reports) > 1 else reports[0], f, indent=1)
    failed = sum(r["failures"] for r in reports)
    print(f"svmsim fuzz: report in {path}" + (f"; {failed} reproducer(s) in {args.out}/<campaign>/"
                                               if failed else ""), file=sys.stderr)
    return 1 if failed else 0
