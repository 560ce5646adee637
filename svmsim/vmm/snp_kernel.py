"""A Multiboot kernel as an SEV-SNP guest of the reference VMM (issue 10
item 7, the Multiboot part).

The VMM loads the kernel as QEMU's ``-kernel`` does (``boot.multiboot``),
then launches it through the AMD-SP the way KVM launches an SNP guest
(``snp_launch.SnpLauncher``):

* guest RAM is mapped by 4 KiB nested pages, the page size of the RMP
  entries the launch creates (table 15-37, Page-Size check), and the host's
  own map of guest RAM is split into 4 KiB pages, as Linux splits its direct
  map, so that a host write to a page the guest shares is not refused for a
  private neighbour in the same 2 MiB (the Hypervisor-Owned check of a 2 MiB
  mapping looks at all 512 entries, 15.36.10);
* every page the loader wrote (the memory map and MBI, the loader's GDT, the
  image with its .bss, the Multiboot information after it) becomes Pre-Guest
  at its gPA and is launched as a NORMAL page: measured, encrypted, validated;
* the kernel's SEV metadata, an ELF section ``.sev_metadata`` in OVMF's
  ``ASEV`` layout (``ovmf.parse_sev_metadata``), names its CPUID page (QEMU's
  table for the vCPU type, checked by the firmware), its secrets page and its
  zero pages (SNP_SEC_MEM);
* the BSP's VMSA holds the Multiboot entry state (32-bit protected mode,
  paging off, EAX = 2BADB002h, EBX = the MBI) with SEV_FEATURES = SNPActive;
* SNP_LAUNCH_FINISH, then the VMCB: SEV, SEV-ES, LBR virtualization and the
  VMSA pointer (APM vol 2, 15.35.2, 15.36.2).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

from ..boot import multiboot
from ..errors import LoadError
from ..sev.snp_api import VMSA_GPA, PageType
from ..svm.vmcb import FIELDS as VMCB_FIELDS
from ..svm.vmsa import BY_NAME as VMSA_FIELDS, VmsaView
from . import ovmf as O
from .snp_launch import SnpLauncher
from .vcpu_reset import reset_vmsa
from .vmm import GUEST_BASE, HOST_PD, PASSTHROUGH

PAGE = 0x1000
_2M = 1 << 21
SNP_ACTIVE = 1                          # SEV_FEATURES bit 0
METADATA_SECTION = ".sev_metadata"


def kernel_sev_metadata(path: str) -> list:
    """The (gPA, size, type) sections a kernel declares in ``.sev_metadata``;
    empty if it has none."""
    try:
        with open(path, "rb") as f:
            section = ELFFile(f).get_section_by_name(METADATA_SECTION)
            data = section.data() if section is not None else b""
    except (OSError, ELFError) as e:
        raise LoadError(f"{path}: cannot read its ELF sections: {e}") from None
    return O.parse_sev_metadata(data, 0, path) if data else []


def loaded_regions(info) -> list:
    """(gPA, length) of everything the Multiboot loader wrote, page-rounded:
    the memory map and MBI, the loader's GDT, the image and the Multiboot
    information after it (module list and strings)."""
    strings = sum(len(m.cmdline.encode()) + 1 for m in info.modules)
    info_end = (info.info_addr + multiboot.MOD_ENTRY_SIZE * len(info.modules) + strings
                + len(info.cmdline.encode()) + 1 + len(multiboot.BOOT_LOADER_NAME) + 1)
    end = _page_up(max([info_end] + [m.end for m in info.modules]))
    first = info.load_addr & ~(PAGE - 1)
    return [(multiboot.MMAP_ADDR, PAGE), (multiboot.GDT_ADDR & ~(PAGE - 1), PAGE),
            (first, end - first)]


def _page_up(x: int) -> int:
    return (x + PAGE - 1) & ~(PAGE - 1)


def vmsa_from_vmcb(vmcb, gprs: dict, signature: int, sev_features: int = 0) -> bytes:
    """A VMSA page holding the guest state the VMCB save area holds (the
    entry state ``Vmm.load_kernel`` wrote), the other GPRs from ``gprs``
    ({"rbx": ...}), over the reset state's FPU values."""
    page = bytearray(reset_vmsa(0, signature, sev_features))
    v = VmsaView(page)
    for f in VMCB_FIELDS:
        if (f.area == "save" and f.parent is None and f.name in VMSA_FIELDS
                and VMSA_FIELDS[f.name].offset < 0x2E8):
            v[f.name] = vmcb[f.name]
    for name, value in gprs.items():
        v[name.upper()] = value
    return bytes(page)


def map_4k(vmm) -> None:
    """Nested tables with 4 KiB pages for guest RAM, and the host's map of
    guest RAM and of the VMM's scratch pages below it (the guest context,
    VMSAs) split into 4 KiB pages."""
    root, bus = vmm._alloc(), vmm.m.bus
    for gpa in range(0, vmm.guest_mem, _2M):
        vmm._map(root, gpa, GUEST_BASE + gpa, PAGE)          # creates the tables down to the PT
        table = nested_table(bus, root, gpa)
        bus.write_bytes(table, b"".join((GUEST_BASE + gpa + i * PAGE | 7).to_bytes(8, "little")
                                        for i in range(512)))
    for lo, hi in PASSTHROUGH:
        for a in range(lo, hi, PAGE):
            vmm._map(root, a, a, PAGE)
    vmm.n_cr3 = root
    for v in vmm.vcpus:                      # every vCPU walks the same nested tables
        v.vmcb["N_CR3"] = root
    for big in range(GUEST_BASE - _2M, GUEST_BASE + vmm.guest_mem, _2M):
        table = vmm._alloc()
        bus.write_bytes(table, b"".join((big + i * PAGE | 3).to_bytes(8, "little") for i in range(512)))
        bus.write(HOST_PD + 8 * (big >> 21), 8, table | 3)
    vmm.cpu.tlb.flush_all("the host map of guest RAM split into 4 KiB pages")


def nested_table(bus, root: int, gpa: int) -> int:
    """The page table (level 1) that maps ``gpa``."""
    table = root
    for level in (4, 3, 2):
        table = bus.read(table + (gpa >> (12 + 9 * (level - 1)) & 0x1FF) * 8, 8) & 0x000FFFFFFFFFF000
    return table


@dataclass
class SnpKernelLaunch:
    """What the launch produced."""
    kernel: str
    info: object                                  # the loader's BootInfo
    sections: list = field(default_factory=list)  # (gPA, size, type) from .sev_metadata
    regions: list = field(default_factory=list)   # (gPA, length) launched as NORMAL pages
    vmsa_spa: int = 0
    cpuid_gpa: int | None = None
    secrets_gpa: int | None = None
    cpuid_refused: str = ""                       # what the firmware corrected in the CPUID page


class SnpKernelLauncher(SnpLauncher):
    """Load ``path`` into ``vmm`` and launch it as an SEV-SNP guest (``run``)."""

    def __init__(self, vmm, path: str, append: str = "", policy: int | None = None,
                 vcpu_type_name: str = "EPYC-v4", cpuid=None, accept_corrected_cpuid: bool = False):
        super().__init__(vmm, policy, vcpu_type_name=vcpu_type_name, cpuid=cpuid,
                         accept_corrected_cpuid=accept_corrected_cpuid)
        self.path, self.append = path, append
        self.result: SnpKernelLaunch | None = None

    # -- memory -------------------------------------------------------------------------
    def load(self) -> SnpKernelLaunch:
        info = self.vmm.load_kernel(self.path, self.append)
        sections = kernel_sev_metadata(self.path)
        for gpa, size, _ in sections:
            if gpa + size > self.vmm.guest_mem:
                raise LoadError(f"{self.path}: SEV metadata section at {gpa:#x} is beyond guest RAM")
        self.result = SnpKernelLaunch(self.path, info, sections, loaded_regions(info))
        map_4k(self.vmm)
        return self.result

    # -- the AMD-SP -----------------------------------------------------------------------
    def update_image(self) -> None:
        for gpa, length in self.result.regions:
            for off in range(0, length, PAGE):
                self.update_ok(GUEST_BASE + gpa + off, gpa + off, PageType.NORMAL)

    def update_metadata(self) -> None:
        r = self.result
        self.update_sections(r.sections)
        r.cpuid_gpa, r.secrets_gpa, r.cpuid_refused = self.cpuid_gpa, self.secrets_gpa, self.cpuid_refused

    def update_vmsa(self) -> None:
        """The BSP's VMSA in a host page, launched as a VMSA page."""
        vmm, r = self.vmm, self.result
        r.vmsa_spa = self.host_page()
        vmm.m.bus.write_bytes(r.vmsa_spa, vmsa_from_vmcb(vmm.vmcb, vmm.gprs, self.vcpu.signature,
                                                         SNP_ACTIVE))
        self.update_ok(r.vmsa_spa, VMSA_GPA, PageType.VMSA)

    def configure_vmcb(self) -> None:
        v = self.vmm.vmcb
        v["SEV_ENABLE"] = v["SEV_ES_ENABLE"] = v["LBR_VIRTUALIZATION_ENABLE"] = 1
        v["VMSA_PA"], v["TLB_CONTROL"] = self.result.vmsa_spa, 1

    def run(self) -> SnpKernelLaunch:
        self.load()
        self.start()
        self.update_image()
        self.update_metadata()
        self.update_vmsa()
        self.finish()
        self.configure_vmcb()
        return self.result
