/*
 * snp_msg.c - sealing and opening SEV-SNP guest messages (snp_msg.h).
 */
#include "snp_msg.h"
#include "aesgcm.h"

#define AAD_OFFSET 0x30
#define AAD_LEN (sizeof(struct snp_msg_hdr) - AAD_OFFSET)

static void iv_of(uint64_t seqno, uint8_t iv[12])
{
    for (int i = 0; i < 8; i++)
        iv[i] = (uint8_t)(seqno >> (8 * i));
    iv[8] = iv[9] = iv[10] = iv[11] = 0;
}

void snp_msg_seal(const uint8_t vmpck[32], uint8_t vmpck_id, uint64_t seqno, uint8_t type,
                  const void *payload, size_t len, void *out)
{
    struct snp_msg_hdr *h = out;
    uint8_t iv[12];
    memset(h, 0, sizeof *h);
    h->seqno = seqno;
    h->algo = 1;
    h->hdr_version = 1;
    h->hdr_sz = sizeof *h;
    h->msg_type = type;
    h->msg_version = 1;
    h->msg_sz = (uint16_t)len;
    h->msg_vmpck = vmpck_id;
    iv_of(seqno, iv);
    aesgcm256_seal(vmpck, iv, (const uint8_t *)h + AAD_OFFSET, AAD_LEN, payload, len,
                   (uint8_t *)out + sizeof *h, h->authtag);
}

int snp_msg_open(const uint8_t vmpck[32], const void *msg, uint64_t seqno, uint8_t type,
                 void *payload, size_t max, size_t *len)
{
    const struct snp_msg_hdr *h = msg;
    uint8_t iv[12];
    if (h->algo != 1 || h->hdr_version != 1 || h->hdr_sz != sizeof *h || h->seqno != seqno
        || h->msg_type != type || h->msg_sz > max || h->msg_sz > SNP_MSG_PAYLOAD_MAX)
        return -1;
    iv_of(seqno, iv);
    if (aesgcm256_open(vmpck, iv, (const uint8_t *)h + AAD_OFFSET, AAD_LEN,
                       (const uint8_t *)msg + sizeof *h, h->msg_sz, h->authtag, payload))
        return -1;
    *len = h->msg_sz;
    return 0;
}
