/*
 * snp_msg: the runtime's SEV-SNP guest messages (lib/snp_msg.c).  It seals a
 * MSG_REPORT_REQ under a known VMPCK and prints it; then opens the answer the
 * test sealed with svmsim's firmware code (Multiboot module 0) and prints its
 * payload, and shows that a wrong sequence number or a flipped byte is refused.
 */
#include "rt.h"
#include "snp_msg.h"

static uint8_t page[SNP_MSG_PAGE], payload[SNP_MSG_PAYLOAD_MAX];

static void hex(const void *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        kprintf("%02x", ((const uint8_t *)p)[i]);
    kprintf("\n");
}

int kmain(uint32_t magic, uint32_t mbi)
{
    uint8_t vmpck[32];
    struct snp_report_req req;
    size_t len;
    for (int i = 0; i < 32; i++)
        vmpck[i] = (uint8_t)(0x40 + i);
    memset(&req, 0, sizeof req);
    for (int i = 0; i < 64; i++)
        req.user_data[i] = (uint8_t)i;
    snp_msg_seal(vmpck, 0, 1, SNP_MSG_REPORT_REQ, &req, sizeof req, page);
    kprintf("request ");
    hex(page, sizeof(struct snp_msg_hdr) + sizeof req);

    const uint32_t *info = (const uint32_t *)(uintptr_t)mbi;
    if (!(info[0] & (1u << 3)) || info[5] < 1)
        return 1;
    const uint32_t *mod = (const uint32_t *)(uintptr_t)info[6];
    uint8_t *answer = (uint8_t *)(uintptr_t)mod[0];
    if (snp_msg_open(vmpck, answer, 2, SNP_MSG_REPORT_RSP, payload, sizeof payload, &len))
        return 2;
    kprintf("answer ");
    hex(payload, len);
    kprintf("wrong seqno %s\n", snp_msg_open(vmpck, answer, 4, SNP_MSG_REPORT_RSP, payload,
                                             sizeof payload, &len) ? "refused" : "ACCEPTED");
    answer[sizeof(struct snp_msg_hdr) + 5] ^= 1;
    kprintf("flipped byte %s\n", snp_msg_open(vmpck, answer, 2, SNP_MSG_REPORT_RSP, payload,
                                              sizeof payload, &len) ? "refused" : "ACCEPTED");
    return 0;
}
