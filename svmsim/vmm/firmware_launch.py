"""Launching a firmware image (OVMF) as an SEV or SEV-ES guest, the way QEMU
does for ``-machine confidential-guest-support=sev0 -object sev-guest,...``
on KVM (issue 9, item 6), so that the guest owner's own tool predicts the
launch measurement.

QEMU and KVM, in order:

1. KVM_SEV_INIT / KVM_SEV_ES_INIT (the platform itself was INITed by the ccp
   driver), LAUNCH_START with the guest owner's policy, DH key and session;
2. the firmware image, mapped so that it ends at 4 GiB, encrypted whole by one
   LAUNCH_UPDATE_DATA (QEMU: sev_encrypt_flash);
3. SEV-ES only: one VMSA per vCPU in vCPU order (KVM_SEV_LAUNCH_UPDATE_VMSA),
   each from the vCPU's reset state (``vcpu_reset``): the BSP at the reset
   vector, the APs at the image's SEV-ES reset block;
4. LAUNCH_MEASURE, whose MEASURE the guest owner checks with its TIK against
   the launch digest it expects.

Every byte measured is what the simulated AMD-SP read from memory through
those commands; nothing here computes a digest.  A mode is a row of
``MODES``; the SEV-SNP launch has its own module (``snp_launch``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import ConfigError, NotModelled
from ..sev.api import PAGE_SIZE, SEV_STATUS_FLAGS_CONFIG_ES, SevCmd, SevPolicy
from ..sev.crypto import MEASURE_LEN, GuestOwner
from .ovmf import OvmfError, OvmfImage
from .psp import SEV_DATA, Psp
from .vcpu_reset import vcpu_type, vcpu_vmsas
from .vmm import GUEST_BASE, GuestExit, Vmm

_2M = 1 << 21


def _layout(guest_mem: int, image_size: int, vcpus: int) -> tuple:
    """(image SPA, first VMSA SPA, end): host RAM after the guest's own RAM."""
    image_spa = GUEST_BASE + guest_mem
    vmsa_base = image_spa + ((image_size + _2M - 1) & ~(_2M - 1))
    return image_spa, vmsa_base, vmsa_base + PAGE_SIZE * vcpus


def host_ram_needed(image_size: int, vcpus: int, guest_mem: int = Vmm.GUEST_MEM) -> int:
    """RAM a machine needs to launch an image of this size (whole MiB, at least 128)."""
    end = _layout(guest_mem, image_size, vcpus)[2]
    return max(128 << 20, (end + (1 << 20) - 1) & ~((1 << 20) - 1))


@dataclass(frozen=True)
class LaunchMode:
    name: str                  # as sev-snp-measure --mode spells it
    title: str
    default_policy: int        # QEMU's sev-guest / sev-snp-guest policy for it
    es: bool                   # one encrypted VMSA per vCPU
    snp: bool = False          # the SNP launch (vmm/snp_launch.py)


MODES = {
    "sev": LaunchMode("sev", "SEV", SevPolicy.NODBG, es=False),
    "seves": LaunchMode("seves", "SEV-ES", SevPolicy.NODBG | SevPolicy.ES, es=True),
    "snp": LaunchMode("snp", "SEV-SNP", 0x30000, es=True, snp=True),
}


def launch_mode(name: str) -> LaunchMode:
    try:
        return MODES[name]
    except KeyError:
        raise ConfigError(f"unknown launch mode {name!r} (sev, seves, snp)") from None


@dataclass
class FirmwareLaunch:
    """What the launch produced: for the guest owner (measurement, mnonce,
    the platform's API version) and for the user (where everything went)."""
    mode: LaunchMode
    vcpus: int
    vcpu_type: str
    policy: int
    handle: int = 0
    image_gpa: int = 0
    image_spa: int = 0
    ap_eip: int | None = None
    vmsa_spas: list = field(default_factory=list)
    api: tuple = (0, 0, 0)                # (major, minor, build) from PLATFORM_STATUS
    measurement: bytes = b""              # MEASURE (32 bytes)
    mnonce: bytes = b""

    @property
    def blob(self) -> bytes:
        """LAUNCH_MEASURE's output as the guest owner receives it."""
        return self.measurement + self.mnonce


class FirmwareLauncher:
    """One launch, step by step (``run`` does them all): a test may play the
    hypervisor between steps and change what the AMD-SP is about to measure."""

    def __init__(self, vmm: Vmm, image: OvmfImage, mode: str = "sev", vcpus: int = 1,
                 vcpu_type_name: str = "EPYC-v4", owner: GuestOwner | None = None,
                 policy: int | None = None):
        self.vmm, self.image, self.mode = vmm, image, launch_mode(mode)
        if self.mode.snp:
            raise ConfigError("an SEV-SNP launch is vmm.snp_launch.SnpFirmwareLauncher")
        if vcpus < 1:
            raise ConfigError("--vcpus must be at least 1")
        self.vcpu = vcpu_type(vcpu_type_name)
        policy = self.mode.default_policy if policy is None else policy
        if bool(policy & SevPolicy.ES) != self.mode.es:
            raise ConfigError(f"policy {policy:#x} does not match mode {self.mode.name}: "
                              "the ES bit (4h) selects SEV-ES, as in QEMU")
        self.owner = owner or GuestOwner(policy)
        if self.owner.policy != policy:
            raise ConfigError("the guest owner's policy differs from the launch's")
        self.psp = Psp(vmm.m)
        self.result = FirmwareLaunch(self.mode, vcpus, vcpu_type_name, policy)

    # -- the VMM lays out guest memory -----------------------------------------------
    def place(self) -> None:
        """The image in host RAM mapped at 4 GiB - size (as QEMU maps the
        flash), and a VMSA page per vCPU holding its reset state."""
        r, vmm, bus = self.result, self.vmm, self.vmm.m.bus
        r.image_gpa = self.image.gpa
        r.image_spa, vmsa_base, end = _layout(vmm.guest_mem, self.image.size, r.vcpus)
        if end > bus.low_top:
            raise ConfigError(f"the machine needs at least "
                              f"{host_ram_needed(self.image.size, r.vcpus, vmm.guest_mem) >> 20} MiB "
                              "of RAM for this image")
        bus.write_bytes(r.image_spa, self.image.data)
        vmm.map_region(r.image_gpa, r.image_spa, self.image.size)
        if self.mode.es:
            r.ap_eip = self.image.sev_es_reset_eip()
            if not r.ap_eip:
                raise OvmfError(f"{self.image.name}: no SEV-ES reset block in the OVMF table "
                                "(QEMU refuses to launch it as an SEV-ES guest)")
            for i, page in enumerate(vcpu_vmsas(r.vcpus, r.ap_eip, self.vcpu.signature)):
                spa = vmsa_base + i * PAGE_SIZE
                bus.write_bytes(spa, page)
                r.vmsa_spas.append(spa)

    # -- the AMD-SP, through its mailbox -----------------------------------------------
    def start(self) -> None:
        """Platform INIT (if needed), the PDH to the guest owner, LAUNCH_START."""
        psp, r = self.psp, self.result
        psp.init_platform()
        status = psp.call(SevCmd.PLATFORM_STATUS, "status")
        r.api = (status["api_major"], status["api_minor"], status["build"])
        if self.mode.es and not status["flags"] & SEV_STATUS_FLAGS_CONFIG_ES:
            raise NotModelled("SEV-ES on this CPU model: the AMD-SP was initialised without SEV-ES "
                              "(CPUID Fn8000_001F EAX[3] = 0)")
        r.handle = psp.launch_start(self.owner)

    def update_data(self) -> None:
        """The whole image in one LAUNCH_UPDATE_DATA (QEMU's sev_encrypt_flash)."""
        r = self.result
        self.psp.call(SevCmd.LAUNCH_UPDATE_DATA, "update", handle=r.handle, address=r.image_spa,
                      len=self.image.size)

    def update_vmsas(self) -> None:
        """SEV-ES: LAUNCH_UPDATE_VMSA for each vCPU, in vCPU order."""
        r = self.result
        for spa in r.vmsa_spas:
            self.psp.call(SevCmd.LAUNCH_UPDATE_VMSA, "update", handle=r.handle, address=spa,
                          len=PAGE_SIZE)

    def measure(self) -> FirmwareLaunch:
        r, bus = self.result, self.vmm.m.bus
        self.psp.call(SevCmd.LAUNCH_MEASURE, "update", handle=r.handle, address=SEV_DATA,
                      len=MEASURE_LEN)
        blob = bus.read_bytes(SEV_DATA, MEASURE_LEN)
        r.measurement, r.mnonce = blob[:32], blob[32:]
        return r

    def finish(self) -> None:
        self.psp.call(SevCmd.LAUNCH_FINISH, "handle", handle=self.result.handle)

    def run(self) -> FirmwareLaunch:
        self.place()
        self.start()
        self.update_data()
        self.update_vmsas()
        return self.measure()

    # -- the guest owner ---------------------------------------------------------------
    def verify(self, expected_digest: bytes) -> bool:
        """The guest owner's check: MEASURE = HMAC(TIK, 04 || API || BUILD ||
        POLICY || expected digest || MNONCE)."""
        return self.owner.verify_measurement(self.result.blob, *self.result.api, expected_digest)


def launch_firmware(image: OvmfImage, mode: str = "sev", vcpus: int = 1,
                    vcpu_type_name: str = "EPYC-v4", owner: GuestOwner | None = None,
                    policy: int | None = None, machine=None) -> FirmwareLauncher:
    """Launch ``image`` under a fresh reference VMM (on ``machine``, or a new
    one with room for it) up to LAUNCH_MEASURE; the launcher holds the result
    and the guest owner's check."""
    if machine is None:
        from ..machine import Machine
        machine = Machine(mem_size=host_ram_needed(image.size, vcpus))
    launcher = FirmwareLauncher(Vmm(machine), image, mode, vcpus, vcpu_type_name, owner, policy)
    launcher.run()
    return launcher


__all__ = ["FirmwareLauncher", "FirmwareLaunch", "LaunchMode", "MODES", "launch_firmware",
           "launch_mode", "GuestExit"]
