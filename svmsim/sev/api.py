"""SEV firmware API identifiers and parameter buffers: command ids, states,
status codes, policy bits, and the ``struct sev_data_*`` layouts (Linux
include/linux/psp-sev.h, include/uapi/linux/psp-sev.h; AMD pub. 55766).
"""
from __future__ import annotations

import struct
from enum import IntEnum, IntFlag

# --------------------------------------------------------------------------------
# Identifiers (Linux include/linux/psp-sev.h and include/uapi/linux/psp-sev.h)
# --------------------------------------------------------------------------------


class SevCmd(IntEnum):
    INIT = 0x001
    SHUTDOWN = 0x002
    FACTORY_RESET = 0x003
    PLATFORM_RESET = 0x003          # the SEV API spec's name
    PLATFORM_STATUS = 0x004
    PEK_GEN = 0x005
    PEK_CSR = 0x006
    PEK_CERT_IMPORT = 0x007
    PDH_CERT_EXPORT = 0x008
    PDH_GEN = 0x009
    DF_FLUSH = 0x00A
    DOWNLOAD_FIRMWARE = 0x00B
    GET_ID = 0x00C
    INIT_EX = 0x00D
    DECOMMISSION = 0x020
    ACTIVATE = 0x021
    DEACTIVATE = 0x022
    GUEST_STATUS = 0x023
    LAUNCH_START = 0x030
    LAUNCH_UPDATE_DATA = 0x031
    LAUNCH_UPDATE_VMSA = 0x032
    LAUNCH_MEASURE = 0x033
    LAUNCH_UPDATE_SECRET = 0x034
    LAUNCH_SECRET = 0x034           # the SEV API spec's name
    LAUNCH_FINISH = 0x035
    ATTESTATION_REPORT = 0x036
    SEND_START = 0x040
    SEND_UPDATE_DATA = 0x041
    SEND_UPDATE_VMSA = 0x042
    SEND_FINISH = 0x043
    SEND_CANCEL = 0x044
    RECEIVE_START = 0x050
    RECEIVE_UPDATE_DATA = 0x051
    RECEIVE_UPDATE_VMSA = 0x052
    RECEIVE_FINISH = 0x053
    DBG_DECRYPT = 0x060
    DBG_ENCRYPT = 0x061


class SevState(IntEnum):
    """Platform state (enum sev_state)."""
    UNINIT = 0
    INIT = 1
    WORKING = 2


class SevGuestState(IntEnum):
    """Guest state (GSTATE, SEV API spec 6.1.1 as in sev-tool)."""
    UNINIT = 0
    LUPDATE = 1
    LSECRET = 2
    RUNNING = 3
    SUPDATE = 4
    RUPDATE = 5
    SENT = 6


class SevStatus(IntEnum):
    """Firmware status codes (sev_ret_code, SEV_RET_ prefix dropped; Linux's
    spellings first, the spec's as aliases)."""
    SUCCESS = 0x00
    INVALID_PLATFORM_STATE = 0x01
    INVALID_GUEST_STATE = 0x02
    INAVLID_CONFIG = 0x03
    INVALID_CONFIG = 0x03
    INVALID_LEN = 0x04
    INVALID_LENGTH = 0x04
    ALREADY_OWNED = 0x05
    INVALID_CERTIFICATE = 0x06
    POLICY_FAILURE = 0x07
    INACTIVE = 0x08
    INVALID_ADDRESS = 0x09
    BAD_SIGNATURE = 0x0A
    BAD_MEASUREMENT = 0x0B
    ASID_OWNED = 0x0C
    INVALID_ASID = 0x0D
    WBINVD_REQUIRED = 0x0E
    DFFLUSH_REQUIRED = 0x0F
    DF_FLUSH_REQUIRED = 0x0F
    INVALID_GUEST = 0x10
    INVALID_COMMAND = 0x11
    ACTIVE = 0x12
    HWSEV_RET_PLATFORM = 0x13
    HWERROR_PLATFORM = 0x13
    HWSEV_RET_UNSAFE = 0x14
    HWERROR_UNSAFE = 0x14
    UNSUPPORTED = 0x15
    INVALID_PARAM = 0x16
    RESOURCE_LIMIT = 0x17
    SECURE_DATA_INVALID = 0x18
    INVALID_PAGE_SIZE = 0x19
    INVALID_PAGE_STATE = 0x1A
    INVALID_MDATA_ENTRY = 0x1B
    INVALID_PAGE_OWNER = 0x1C
    AEAD_OFLOW = 0x1D
    INVALID_PAGE_AEAD_OFLOW = 0x1D
    EXIT_RING_BUFFER = 0x1F
    RING_BUFFER_EXIT = 0x1F
    RMP_INIT_REQUIRED = 0x20
    BAD_SVN = 0x21
    BAD_VERSION = 0x22
    SHUTDOWN_REQUIRED = 0x23
    UPDATE_FAILED = 0x24
    RESTORE_REQUIRED = 0x25
    RMP_INITIALIZATION_FAILED = 0x26
    INVALID_KEY = 0x27


class SevPolicy(IntFlag):
    NODBG = 1 << 0
    NOKS = 1 << 1
    ES = 1 << 2
    NOSEND = 1 << 3
    DOMAIN = 1 << 4
    SEV = 1 << 5


SEV_INIT_FLAGS_SEV_ES = 0x01
SEV_STATUS_FLAGS_OWNER = 0x0001       # flags bit 0: externally owned
SEV_STATUS_FLAGS_CONFIG_ES = 0x0100   # flags bit 8 (config bit 0)
TMR_SIZE = 1 << 20
GET_ID_LEN = 128                      # struct sev_user_data_get_id: socket1[64], socket2[64]
PAGE_SIZE = 4096

# -- parameter buffers: name -> (struct format, field names) ------------------------
# Offsets follow the packed structs in include/linux/psp-sev.h.
COMMAND_LAYOUTS = {
    "init": ("<IIQI", ("flags", "_r", "tmr_address", "tmr_len")),
    "init_ex": ("<IIQIIQI", ("length", "flags", "tmr_address", "tmr_len", "_r",
                             "nv_address", "nv_len")),
    "status": ("<BBBIBI", ("api_major", "api_minor", "state", "flags", "build", "guest_count")),
    "addr_len": ("<QI", ("address", "len")),            # PEK_CSR, GET_ID
    "pek_cert_import": ("<QIIQI", ("pek_cert_address", "pek_cert_len", "_r",
                                   "oca_cert_address", "oca_cert_len")),
    "pdh_cert_export": ("<QIIQI", ("pdh_cert_address", "pdh_cert_len", "_r",
                                   "cert_chain_address", "cert_chain_len")),
    "handle": ("<I", ("handle",)),                      # DECOMMISSION, DEACTIVATE, *_FINISH, SEND_CANCEL
    "activate": ("<II", ("handle", "asid")),
    "guest_status": ("<IIIB", ("handle", "policy", "asid", "state")),
    "launch_start": ("<IIQIIQI", ("handle", "policy", "dh_cert_address", "dh_cert_len", "_r",
                                  "session_address", "session_len")),
    "update": ("<IIQI", ("handle", "_r", "address", "len")),   # UPDATE_DATA/VMSA, MEASURE
    "packet": ("<IIQIIQIIQI", ("handle", "_r1", "hdr_address", "hdr_len", "_r2",
                               "guest_address", "guest_len", "_r3",
                               "trans_address", "trans_len")),  # SECRET, SEND/RECEIVE_UPDATE_DATA
    "send_start": ("<IIQIIQIIQIIQI", ("handle", "policy", "pdh_cert_address", "pdh_cert_len",
                                      "_r1", "plat_certs_address", "plat_certs_len", "_r2",
                                      "amd_certs_address", "amd_certs_len", "_r3",
                                      "session_address", "session_len")),
    "receive_start": ("<IIQIIQI", ("handle", "policy", "pdh_cert_address", "pdh_cert_len", "_r",
                                   "session_address", "session_len")),
    "dbg": ("<IIQQI", ("handle", "_r", "src_addr", "dst_addr", "len")),
}


def buffer_size(layout: str) -> int:
    return struct.calcsize(COMMAND_LAYOUTS[layout][0])


def pack_buffer(layout: str, **fields) -> bytes:
    """Build a command buffer (for VMMs and tests); missing fields are 0."""
    fmt, names = COMMAND_LAYOUTS[layout]
    return struct.pack(fmt, *(fields.get(n, 0) for n in names))


def unpack_buffer(layout: str, data: bytes) -> dict:
    fmt, names = COMMAND_LAYOUTS[layout]
    return dict(zip(names, struct.unpack_from(fmt, data)))


def _field_offset(layout: str, name: str) -> int:
    fmt, names = COMMAND_LAYOUTS[layout]
    i = names.index(name)
    return struct.calcsize(fmt[:i + 1])   # '<' + the first i codes
