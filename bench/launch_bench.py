"""Launch benchmark: how long the reference VMM and the simulated AMD-SP take
to launch a firmware image (OVMF) as an SEV / SEV-ES guest up to
LAUNCH_MEASURE, or as an SEV-SNP guest up to its first attestation report,
and how much of it is each AMD-SP command.

Usage: ``python bench/launch_bench.py [--ovmf FILE] [--vcpus N] [--repeat R] [--json]``
"""
import argparse
import json
import time


def one_launch(image, mode, vcpus):
    from svmsim.vmm import psp
    from svmsim.vmm.firmware_launch import launch_firmware
    per_command, command = {}, psp.Psp.command

    def timed(self, cmd, *args, **fields):
        t = time.perf_counter()
        try:
            return command(self, cmd, *args, **fields)
        finally:
            name = psp._command_name(cmd)
            per_command[name] = per_command.get(name, 0.0) + time.perf_counter() - t

    psp.Psp.command = timed
    try:
        t = time.perf_counter()
        if mode == "snp":
            launch_snp(image, vcpus)
        else:
            launch_firmware(image, mode, vcpus)
        return time.perf_counter() - t, per_command
    finally:
        psp.Psp.command = command


def launch_snp(image, vcpus):
    from svmsim.machine import Machine
    from svmsim.vmm import Vmm
    from svmsim.vmm.snp_launch import SnpFirmwareLauncher, host_ram_needed
    m = Machine(mem_size=host_ram_needed(image.size, vcpus, Vmm.GUEST_MEM))
    launcher = SnpFirmwareLauncher(Vmm(m), image, vcpus)
    launcher.run()
    launcher.attest()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ovmf", default="/usr/share/ovmf/OVMF.fd")
    ap.add_argument("--vcpus", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from svmsim.vmm.ovmf import OvmfImage
    image = OvmfImage.from_file(args.ovmf)
    results = {}
    for mode in ("sev", "seves", "snp"):
        runs = [one_launch(image, mode, args.vcpus) for _ in range(args.repeat)]
        best, per_command = min(runs, key=lambda r: r[0])
        results[mode] = {"seconds": best, "commands": per_command}
    if args.json:
        print(json.dumps({"image_bytes": image.size, "vcpus": args.vcpus, **results}, indent=1))
        return
    print(f"{args.ovmf}: {image.size >> 10} KiB, {args.vcpus} vCPUs, best of {args.repeat}")
    for mode, r in results.items():
        top = sorted(r["commands"].items(), key=lambda kv: -kv[1])[:3]
        print(f"  {mode:6} {r['seconds']:.3f} s  (" +
              ", ".join(f"{name} {sec:.3f} s" for name, sec in top) + ")")


if __name__ == "__main__":
    main()
