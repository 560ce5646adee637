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
POLICY_CXL_ALLOW, POLICY_MEM_AES_256_XTS, POLICY_RAPL_DIS = 1 << 21, 1 << 22, 1 << 23
POLICY_CIPHERTEXT_HIDING, POLICY_PAGE_SWAP_DISABLE = 1 << 24, 1 << 25
POLICY_MBZ = ~((1 << 26) - 1) & ((1 << 64) - 1)     # bits 63:26 must be zero

# SNP_INIT_EX flags, SNP_LAUNCH_START flags, SNP_LAUNCH_FINISH flags, SNP_CONFIG flags.
INIT_EX_INIT_RMP, INIT_EX_LIST_PADDR_EN = 1 << 0, 1 << 1
LAUNCH_START_MA_EN, LAUNCH_START_IMI_EN = 1 << 0, 1 << 1
FINISH_ID_BLOCK_EN, FINISH_AUTH_KEY_EN, FINISH_VCEK_DISABLED = 1 << 0, 1 << 1, 1 << 2
CONFIG_MASK_CHIP_ID, CONFIG_MASK_CHIP_KEY = 1 << 0, 1 << 1

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
    "range_list": ("<II", ("num_elements", "_r")),        # followed by "range" entries
    "range": ("<QII", ("base", "page_count", "_r")),
    # -- not command buffers: structures the firmware reads or writes ----------------
    "id_block": ("<48s16s16sIIQ", ("ld", "family_id", "image_id", "version", "guest_svn",
                                   "policy")),                # ABI table "ID_BLOCK", 0x60 bytes
    "id_auth": ("<II56s512s1028s60s512s1028s892s",
                ("id_key_algo", "auth_key_algo", "_r1", "id_block_sig", "id_key", "_r2",
                 "id_key_sig", "author_key", "_r3")),         # ABI table "ID_AUTH", 0x1000 bytes
    "msg_hdr": ("<32sQ8sBBHBBHIB35s", ("authtag", "msg_seqno", "_r1", "algo", "hdr_version",
                                       "hdr_sz", "msg_type", "msg_version", "msg_sz", "_r2",
                                       "msg_vmpck", "_r3")),  # guest message header, 0x60 bytes
    "report_req": ("<64sI28s", ("user_data", "vmpl", "_r")),
    "report_rsp": ("<II24s", ("status", "report_size", "_r")),          # then the report
    "key_req": ("<IIQIIQ", ("root_key_select", "_r", "guest_field_select", "vmpl",
                            "guest_svn", "tcb_version")),
    "key_rsp": ("<I28s32s", ("status", "_r", "key")),
    "secrets": ("<IIII16s32s32s32s32s96s64s", ("version", "imien", "fms", "_r", "gosvw",
                                               "vmpck0", "vmpck1", "vmpck2", "vmpck3", "os_area",
                                               "vmsa_tweak_bitmap")),
}

# SNP_PLATFORM_STATUS output (struct sev_user_data_snp_status).
PLATFORM_STATUS = struct.Struct("<BBBBIIIQQ")
# SNP_GUEST_STATUS output: POLICY, ASID, STATE, VCEK_DIS (ABI 8.x).
GUEST_STATUS = struct.Struct("<QIBxxxI")
# The measured page description of SNP_LAUNCH_UPDATE (ABI 8.17.2, table 67).
PAGE_INFO_LEN = 0x70
PAGE_INFO = struct.Struct("<48s48sHBBBBBxQ")   # DIGEST_CUR, CONTENTS, LENGTH, PAGE_TYPE, IMI_PAGE,
                                               # VMPL3/2/1_PERMS, reserved, GPA
VMSA_GPA = 0xFFFFFFFFF000             # the gPA KVM gives VMSA pages (INITIAL_VMSA_GPA)
ID_BLOCK_LEN, ID_AUTH_LEN = 0x60, 0x1000
ID_BLOCK_VERSION = 1
ALGO_ECDSA_P384_SHA384 = 1            # ID_KEY_ALGO / AUTH_KEY_ALGO / report SIGNATURE_ALGO
CURVE_P384 = 2                        # in the ABI's ECDSA public key format
PUBKEY_LEN, SIG_LEN = 0x404, 0x200    # public key {curve, Qx[72], Qy[72]}; signature {R[72], S[72]}

# Guest messages (ABI chapter 7; Linux struct snp_guest_msg_hdr).
MSG_HDR_LEN = 0x60
MSG_PAGE = 0x1000
MSG_PAYLOAD_MAX = MSG_PAGE - MSG_HDR_LEN
MSG_AAD = slice(0x30, 0x60)           # the header bytes the AEAD authenticates
AEAD_AES_256_GCM = 1
MSG_HDR_VERSION = 1


class MsgType(IntEnum):
    CPUID_REQ, CPUID_RSP = 1, 2
    KEY_REQ, KEY_RSP = 3, 4
    REPORT_REQ, REPORT_RSP = 5, 6
    EXPORT_REQ, EXPORT_RSP = 7, 8
    IMPORT_REQ, IMPORT_RSP = 9, 10
    ABSORB_REQ, ABSORB_RSP = 11, 12
    VMRK_REQ, VMRK_RSP = 13, 14


# MSG_KEY_REQ guest_field_select bits (which guest facts the derived key mixes in).
KEY_FIELD_POLICY, KEY_FIELD_IMAGE_ID, KEY_FIELD_FAMILY_ID = 1 << 0, 1 << 1, 1 << 2
KEY_FIELD_MEASUREMENT, KEY_FIELD_GUEST_SVN, KEY_FIELD_TCB_VERSION = 1 << 3, 1 << 4, 1 << 5
KEY_FIELD_MASK = (1 << 6) - 1
KEY_ROOT_VCEK, KEY_ROOT_VMRK = 0, 1
SECRETS_VERSION = 3


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
