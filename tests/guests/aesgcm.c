/*
 * aesgcm: the runtime's AES-256-GCM (lib/aesgcm.c) on fixed inputs; the test
 * (tests/test_snp_guest_crypto.py) checks each line against Python's
 * cryptography.  One line per case: ciphertext, tag, then whether the tag
 * opens the message and whether a flipped tag bit is refused.
 */
#include "rt.h"
#include "aesgcm.h"

static void hex(const uint8_t *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        kprintf("%02x", b[i]);
}

int kmain(uint32_t magic, uint32_t mbi)
{
    static const size_t lens[] = {0, 1, 16, 17, 100};
    static uint8_t key[32], iv[12], aad[48], pt[100], ct[100], back[100];
    uint8_t tag[16];
    for (int i = 0; i < 32; i++)
        key[i] = (uint8_t)i;
    for (int i = 0; i < 12; i++)
        iv[i] = (uint8_t)(0xA0 + i);
    for (int i = 0; i < 48; i++)
        aad[i] = (uint8_t)(3 * i);
    for (int i = 0; i < 100; i++)
        pt[i] = (uint8_t)(7 * i + 1);
    for (unsigned c = 0; c < sizeof lens / sizeof lens[0]; c++) {
        size_t n = lens[c];
        aesgcm256_seal(key, iv, aad, c & 1 ? 48 : 0, pt, n, ct, tag);
        kprintf("aesgcm %u ", (unsigned)n);
        hex(ct, n);
        kprintf(" ");
        hex(tag, 16);
        int ok = aesgcm256_open(key, iv, aad, c & 1 ? 48 : 0, ct, n, tag, back) == 0
                 && memcmp(back, pt, n) == 0;
        tag[15] ^= 0x80;
        int refused = aesgcm256_open(key, iv, aad, c & 1 ? 48 : 0, ct, n, tag, back) == -1;
        kprintf(" %s %s\n", ok ? "opens" : "FAILS", refused ? "refused" : "ACCEPTED");
    }
    return 0;
}
