"""SEV-SNP firmware API identifiers and parameter buffers (AMD SEV-SNP ABI
specification 56860; layouts as Linux include/linux/psp-sev.h declares
them: ``struct sev_data_snp_*``).  Status codes are the legacy API's
(``api.SevStatus``)."""
from __future__ import annotations

import struct
from enum import IntEnum


class SnpCmd(IntEnum):
    INIT = 0x081
    SHUTDOWN = 0x082
    PLATFORM_STATUS = 0x083
    DF_FLUSH = 0x084
    INIT_EX = 0x085
    SHUTDOWN_EX = 0x086
    DECOMMISSION = 0x090
    ACTIVATE = 0x091
    GUEST_STATUS = 0x092
    GCTX_CREATE = 0x093
    GUEST_REQUEST = 0x094
    ACTIVATE_EX = 0x095
    LAUNCH_START = 0x0A0
    LAUNCH_UPDATE = 0x0A1
    LAUNCH_FINISH = 0x0A2
    DBG_DECRYPT = 0x0B0
    DBG_ENCRYPT = 0x0B1
    PAGE_SWAP_OUT = 0x0C0
    PAGE_SWAP_IN = 0x0C1
    PAGE_MOVE = 0x0C2
    PAGE_MD_INIT = 0x0C3
    PAGE_SET_STATE = 0x0C6
    PAGE_RECLAIM = 0x0C7
    PAGE_UNSMASH = 0x0C8
    CONFIG = 0x0C9
    DOWNLOAD_FIRMWARE_EX = 0x0CA
    COMMIT = 0x0CB
    VLEK_LOAD = 0x0CD


class SnpState(IntEnum):
    """SNP platform state."""
    UNINIT = 0
    INIT = 1


class SnpGuestState(IntEnum):
    """SNP guest state (GSTATE)."""
    INIT = 0
    LAUNCH = 1
    RUNNING = 2


class PageType(IntEnum):
    """SNP_LAUNCH_UPDATE page types."""
    NORMAL = 1
    VMSA = 2
    ZERO = 3
    UNMEASURED = 4
    SECRETS = 5
    CPUID = 6


# Policy bits (ABI 4.3; go-sev-guest abi.go).
POLICY_ABI_MINOR, POLICY_ABI_MAJOR = 0, 8          # bit positions of the 8-bit fields
POLICY_SMT, POLICY_RSVD1, POLICY_MIGRATE_MA, POLICY_DEBUG = 1 << 16, 1 << 17, 1 << 18, 1 << 19
POLICY_SINGLE_SOCKET = 1 << 20

# name -> (struct format, field names); bit fields are decoded by the firmware.
LAYOUTS = {
    "addr": ("<Q", ("address",)),                             # PLATFORM_STATUS, GCTX_CREATE, DECOMMISSION, DF_FLUSH
    "init_ex": ("<IIQH46s", ("flags", "_r", "list_paddr", "max_snp_asid", "_r2")),
    "shutdown_ex": ("<II", ("len", "flags")),
    "activate": ("<QI", ("gctx_paddr", "asid")),
    "launch_start": ("<QQQII16s", ("gctx_paddr", "policy", "ma_gctx_paddr", "flags",
                                   "desired_tsc_khz", "gosvw")),
    "launch_update": ("<QIIQII", ("gctx_paddr", "flags", "_r2", "address", "perms", "_r4")),
    "launch_finish": ("<QQQQ32s", ("gctx_paddr", "id_block_paddr", "id_auth_paddr", "flags",
                                   "host_data")),
    "guest_status": ("<QQ", ("gctx_paddr", "address")),
    "guest_request": ("<QQQ", ("gctx_paddr", "req_paddr", "res_paddr")),
    "page": ("<Q", ("paddr",)),                               # PAGE_RECLAIM, PAGE_UNSMASH
    "dbg": ("<QQQ", ("gctx_paddr", "src_addr", "dst_addr")),
    "config": ("<QI52s", ("reported_tcb", "flags", "_r")),
}

# SNP_PLATFORM_STATUS output (struct sev_user_data_snp_status).
PLATFORM_STATUS = struct.Struct("<BBBBIIIQQ")
# SNP_GUEST_STATUS output: POLICY, ASID, STATE, VCEK_DIS (ABI 8.x).
GUEST_STATUS = struct.Struct("<QIBxxxI")
# The measured page description of SNP_LAUNCH_UPDATE (ABI 8.17.2, table 67).
PAGE_INFO_LEN = 0x70
VMSA_GPA = 0xFFFFFFFFF000             # the gPA KVM gives VMSA pages (INITIAL_VMSA_GPA)


def buffer_size(layout: str) -> int:
    return struct.calcsize(LAYOUTS[layout][0])


def pack(layout: str, **fields) -> bytes:
    fmt, names = LAYOUTS[layout]
    return struct.pack(fmt, *(fields.get(n, b"" if c.endswith("s") else 0)
                              for n, c in zip(names, _codes(fmt))))


def unpack(layout: str, data: bytes) -> dict:
    fmt, names = LAYOUTS[layout]
    return dict(zip(names, struct.unpack_from(fmt, data)))


def _codes(fmt):
    out, num = [], ""
    for ch in fmt[1:]:
        if ch.isdigit():
            num += ch
            continue
        out.append(num + ch)
        num = ""
    return out


def launch_update_flags(page_type: int, page_size: int = 0, imi: int = 0) -> int:
    return (page_size & 1) | (page_type & 7) << 1 | (imi & 1) << 4


def vmpl_perms(vmpl1: int = 0, vmpl2: int = 0, vmpl3: int = 0) -> int:
    return (vmpl1 & 0xFF) << 8 | (vmpl2 & 0xFF) << 16 | (vmpl3 & 0xFF) << 24
