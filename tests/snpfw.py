"""An SNP platform for tests of the AMD-SP's SEV-SNP firmware: a machine with
the RMP set up and SNP_INIT_EX done by the host (vmm/snp_host.py), commands
through the PSP mailbox, and a small launch the way KVM drives it (pages
made Pre-Guest by RMPUPDATE, then SNP_LAUNCH_UPDATE each)."""
from svmsim.machine import Machine
from svmsim.memory.encryption import EncryptionEngine
from svmsim.sev import snp_api as A, snp_cpuid
from svmsim.sev.snp_api import PageType, SnpCmd
from svmsim.vmm import snp_host
from svmsim.vmm.psp import Psp

POLICY = 0x30000                      # SMT allowed, reserved bit 17 (what QEMU uses)
SCRATCH = 0x200000                    # host pages for the tests, bump-allocated
ASID = 1


class SnpPlatform:
    def __init__(self, mem="64M", init=True):
        self.m = Machine(mem_size=mem)
        self.psp = Psp(self.m)
        self.fw = self.m.amd_sp.snp
        self.bus = self.m.bus
        self._next = SCRATCH
        if init:
            snp_host.enable_snp(self.m, self.psp)

    def page(self, data=b""):
        pa = self._next
        self._next += 0x1000
        self.bus.write_bytes(pa, bytes(data).ljust(0x1000, b"\0"))
        return pa

    def fw_page(self):
        return snp_host.firmware_page(self.m, self.page())

    def cmd(self, cmd, layout=None, **fields):
        return self.psp.command(cmd, layout, **fields)[0]

    def status(self):
        out = self.fw_page()
        assert self.cmd(SnpCmd.PLATFORM_STATUS, "addr", address=out) == 0
        return A.PLATFORM_STATUS.unpack(self.bus.read_bytes(out, A.PLATFORM_STATUS.size))

    # -- a guest --------------------------------------------------------------------------
    def new_guest(self, policy=POLICY, asid=ASID, start=True):
        g = SnpGuestLaunch(self, self.fw_page())
        assert self.cmd(SnpCmd.GCTX_CREATE, "addr", address=g.gctx) == 0
        if start:
            assert g.start(policy) == 0
            if asid:
                assert g.activate(asid) == 0
        return g


def cpuid_page(platform, extra=()):
    """A CPUID page the firmware accepts: the processor's own values for a
    few leaves, with the hypervisor bit."""
    from svmsim.cpu.cpuid import cpuid
    cpu = platform.m.cpus[0]
    entries = []
    for leaf, sub in ((0, 0), (1, 0), (7, 0), (0x80000000, 0), (0x80000001, 0), (0x80000008, 0),
                      (0x8000001F, 0)):
        regs = list(cpuid(cpu, leaf, sub))
        if leaf == 1:
            regs[2] |= 1 << 31
        entries.append((leaf, sub, *regs))
    return snp_cpuid.pack_table(entries + list(extra))


class SnpGuestLaunch:
    def __init__(self, p, gctx):
        self.p, self.gctx = p, gctx
        self.asid = 0
        self.pages = {}                       # gpa -> spa

    def start(self, policy=POLICY, flags=0):
        return self.p.cmd(SnpCmd.LAUNCH_START, "launch_start", gctx_paddr=self.gctx, policy=policy,
                          flags=flags)

    def activate(self, asid=ASID):
        st = self.p.cmd(SnpCmd.ACTIVATE, "activate", gctx_paddr=self.gctx, asid=asid)
        if st == 0:
            self.asid = asid
        return st

    def pre_guest(self, gpa, data=b"", asid=None):
        """A host page holding ``data``, assigned to the guest at ``gpa`` and
        immutable (KVM's rmp_make_private before SNP_LAUNCH_UPDATE)."""
        spa = self.p.page(data)
        snp_host.rmpupdate(self.p.m, spa, gpa, assigned=True, asid=asid or self.asid, immutable=True)
        self.pages[gpa] = spa
        return spa

    def update(self, spa, page_type=PageType.NORMAL, perms=0, flags=None):
        flags = A.launch_update_flags(page_type) if flags is None else flags
        return self.p.cmd(SnpCmd.LAUNCH_UPDATE, "launch_update", gctx_paddr=self.gctx, flags=flags,
                          address=spa, perms=perms)

    def add(self, gpa, data=b"", page_type=PageType.NORMAL, perms=0):
        spa = self.pre_guest(gpa, data)
        st = self.update(spa, page_type, perms)
        assert st == 0, st
        return spa

    def finish(self, host_data=bytes(32), **fields):
        return self.p.cmd(SnpCmd.LAUNCH_FINISH, "launch_finish", gctx_paddr=self.gctx,
                          host_data=host_data, **fields)

    def private(self, gpa, n=0x1000):
        """The guest's view of its page (decrypted with its key slot)."""
        spa = self.pages[gpa]
        return self.p.m.mem_engine.read(self.p.bus.read_bytes, spa, n, self.asid)


def launched_guest(p=None, secrets_gpa=0x3000, policy=POLICY):
    """A small running guest: two code pages, a secrets page and a CPUID page."""
    p = p or SnpPlatform()
    g = p.new_guest(policy)
    g.add(0x1000, b"\x90" * 100)
    g.add(0x2000, bytes(range(256)) * 16)
    g.add(secrets_gpa, page_type=PageType.SECRETS)
    g.add(0x4000, cpuid_page(p), PageType.CPUID)
    assert g.finish() == 0
    return p, g


def plain_engine_encrypt(key, spa, data):
    return EncryptionEngine.encrypt(key, spa, data)
