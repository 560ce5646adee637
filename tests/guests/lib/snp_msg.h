/*
 * snp_msg.h - SEV-SNP guest messages (SNP firmware ABI, "guest messages";
 * Linux struct snp_guest_msg_hdr; svmsim/sev/snp_crypto.py): a 0x60-byte
 * header, then the payload sealed by AES-256-GCM under a VMPCK.  The IV is
 * the 64-bit sequence number followed by 4 zero bytes; the AEAD covers header
 * bytes 30h-5Fh; the tag is the header's first 16 bytes.  A request carries
 * the next odd sequence number, its answer that number + 1 and the type + 1.
 */
#ifndef SNP_MSG_H
#define SNP_MSG_H
#include "rt.h"

struct snp_msg_hdr {
    uint8_t authtag[32];
    uint64_t seqno;
    uint8_t rsvd1[8];
    uint8_t algo;                    /* 1: AES-256-GCM */
    uint8_t hdr_version;             /* 1 */
    uint16_t hdr_sz;                 /* 0x60 */
    uint8_t msg_type;
    uint8_t msg_version;
    uint16_t msg_sz;
    uint32_t rsvd2;
    uint8_t msg_vmpck;
    uint8_t rsvd3[35];
} __attribute__((packed));

#define SNP_MSG_PAGE 4096
#define SNP_MSG_PAYLOAD_MAX (SNP_MSG_PAGE - sizeof(struct snp_msg_hdr))

enum snp_msg_type {
    SNP_MSG_KEY_REQ = 3, SNP_MSG_KEY_RSP = 4, SNP_MSG_REPORT_REQ = 5, SNP_MSG_REPORT_RSP = 6,
};

struct snp_report_req {              /* MSG_REPORT_REQ */
    uint8_t user_data[64];
    uint32_t vmpl;
    uint8_t rsvd[28];
} __attribute__((packed));

struct snp_report_rsp {              /* MSG_REPORT_RSP, then the 0x4A0-byte report */
    uint32_t status;
    uint32_t report_size;
    uint8_t rsvd[24];
    uint8_t report[0x4A0];
} __attribute__((packed));

struct snp_key_req {                 /* MSG_KEY_REQ */
    uint32_t root_key_select;
    uint32_t rsvd;
    uint64_t guest_field_select;
    uint32_t vmpl;
    uint32_t guest_svn;
    uint64_t tcb_version;
} __attribute__((packed));

struct snp_key_rsp {                 /* MSG_KEY_RSP */
    uint32_t status;
    uint8_t rsvd[28];
    uint8_t key[32];
} __attribute__((packed));

/* Seal ``len`` bytes of ``payload`` into the message page ``out``. */
void snp_msg_seal(const uint8_t vmpck[32], uint8_t vmpck_id, uint64_t seqno, uint8_t type,
                  const void *payload, size_t len, void *out);
/* Open the answer in ``msg``: 0 and its payload (at most ``max`` bytes,
 * *len set) if it authenticates and carries ``seqno`` and ``type``, else -1. */
int snp_msg_open(const uint8_t vmpck[32], const void *msg, uint64_t seqno, uint8_t type,
                 void *payload, size_t max, size_t *len);
#endif
