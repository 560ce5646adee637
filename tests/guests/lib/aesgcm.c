/*
 * aesgcm.c - AES-256 (FIPS 197) and GCM (NIST SP 800-38D) for the guest
 * runtime.  The S-box is computed once from its definition (the inverse in
 * GF(2^8), from powers of the generator 3, then the affine map, FIPS 197 5.1.1); GHASH multiplies in
 * GF(2^128) bit by bit (SP 800-38D 6.3, algorithm 1).
 */
#include "aesgcm.h"

#define NR 14                     /* AES-256: 14 rounds, 60 round-key words */

static uint8_t sbox[256];

static uint8_t gmul(uint8_t a, uint8_t b)
{
    uint8_t p = 0;
    while (b) {
        if (b & 1)
            p ^= a;
        a = (uint8_t)(a << 1) ^ (a & 0x80 ? 0x1B : 0);
        b >>= 1;
    }
    return p;
}

static uint8_t rotl8(uint8_t x, int n) { return (uint8_t)(x << n | x >> (8 - n)); }

static void sbox_init(void)
{
    uint8_t exp[256], log[256], x = 1;
    if (sbox[0] == 0x63)
        return;
    for (int i = 0; i < 255; i++) {            /* powers of the generator 3 */
        exp[i] = x;
        log[x] = (uint8_t)i;
        x = gmul(x, 3);
    }
    for (int v = 0; v < 256; v++) {
        uint8_t inv = v ? exp[(255 - log[v]) % 255] : 0;
        sbox[v] = inv ^ rotl8(inv, 1) ^ rotl8(inv, 2) ^ rotl8(inv, 3) ^ rotl8(inv, 4) ^ 0x63;
    }
}

static void key_expand(const uint8_t key[32], uint8_t rk[4 * 4 * (NR + 1)])
{
    uint8_t rcon = 1;
    memcpy(rk, key, 32);
    for (int i = 8; i < 4 * (NR + 1); i++) {
        uint8_t t[4];
        memcpy(t, rk + 4 * (i - 1), 4);
        if (i % 8 == 0) {                      /* RotWord, SubWord, Rcon */
            uint8_t t0 = t[0];
            t[0] = sbox[t[1]] ^ rcon;
            t[1] = sbox[t[2]];
            t[2] = sbox[t[3]];
            t[3] = sbox[t0];
            rcon = gmul(rcon, 2);
        } else if (i % 8 == 4) {               /* SubWord */
            for (int j = 0; j < 4; j++)
                t[j] = sbox[t[j]];
        }
        for (int j = 0; j < 4; j++)
            rk[4 * i + j] = rk[4 * (i - 8) + j] ^ t[j];
    }
}

/* One block; the state is column-major, s[r + 4c], as the input bytes. */
static void encrypt_block(const uint8_t rk[], const uint8_t in[16], uint8_t out[16])
{
    uint8_t s[16], t[16];
    for (int i = 0; i < 16; i++)
        s[i] = in[i] ^ rk[i];
    for (int round = 1; round <= NR; round++) {
        for (int c = 0; c < 4; c++)            /* SubBytes and ShiftRows */
            for (int r = 0; r < 4; r++)
                t[r + 4 * c] = sbox[s[r + 4 * ((c + r) & 3)]];
        if (round < NR) {
            for (int c = 0; c < 4; c++) {      /* MixColumns */
                uint8_t *col = t + 4 * c, a0 = col[0], a1 = col[1], a2 = col[2], a3 = col[3];
                s[4 * c + 0] = gmul(a0, 2) ^ gmul(a1, 3) ^ a2 ^ a3;
                s[4 * c + 1] = a0 ^ gmul(a1, 2) ^ gmul(a2, 3) ^ a3;
                s[4 * c + 2] = a0 ^ a1 ^ gmul(a2, 2) ^ gmul(a3, 3);
                s[4 * c + 3] = gmul(a0, 3) ^ a1 ^ a2 ^ gmul(a3, 2);
            }
        } else {
            memcpy(s, t, 16);
        }
        for (int i = 0; i < 16; i++)
            s[i] ^= rk[16 * round + i];
    }
    memcpy(out, s, 16);
}

/* GF(2^128) in GCM's bit order: bit 0 is the most significant bit of byte 0. */
struct u128 { uint64_t hi, lo; };

static struct u128 load128(const uint8_t b[16])
{
    struct u128 x = {0, 0};
    for (int i = 0; i < 8; i++) {
        x.hi = x.hi << 8 | b[i];
        x.lo = x.lo << 8 | b[8 + i];
    }
    return x;
}

static void store128(struct u128 x, uint8_t b[16])
{
    for (int i = 7; i >= 0; i--) {
        b[i] = (uint8_t)x.hi;
        b[8 + i] = (uint8_t)x.lo;
        x.hi >>= 8;
        x.lo >>= 8;
    }
}

static struct u128 gf_mul(struct u128 x, struct u128 y)
{
    struct u128 z = {0, 0}, v = y;
    for (int i = 0; i < 128; i++) {
        uint64_t bit = i < 64 ? x.hi >> (63 - i) & 1 : x.lo >> (127 - i) & 1;
        if (bit) {
            z.hi ^= v.hi;
            z.lo ^= v.lo;
        }
        uint64_t carry = v.lo & 1;
        v.lo = v.lo >> 1 | v.hi << 63;
        v.hi >>= 1;
        if (carry)
            v.hi ^= 0xE100000000000000ul;  /* R = 11100001 || 0^120 */
    }
    return z;
}

struct gcm {
    uint8_t rk[4 * 4 * (NR + 1)];
    struct u128 h, acc;
    uint8_t j0[16];
};

static void ghash_update(struct gcm *g, const uint8_t *data, size_t len)
{
    for (size_t off = 0; off < len; off += 16) {
        uint8_t block[16] = {0};
        memcpy(block, data + off, len - off < 16 ? len - off : 16);
        struct u128 x = load128(block);
        g->acc.hi ^= x.hi;
        g->acc.lo ^= x.lo;
        g->acc = gf_mul(g->acc, g->h);
    }
}

static void gcm_init(struct gcm *g, const uint8_t key[32], const uint8_t iv[12], const uint8_t *aad,
                     size_t aad_len)
{
    uint8_t zero[16] = {0}, h[16];
    sbox_init();
    key_expand(key, g->rk);
    encrypt_block(g->rk, zero, h);
    g->h = load128(h);
    g->acc.hi = g->acc.lo = 0;
    memcpy(g->j0, iv, 12);                     /* J0 = IV || 0^31 || 1 */
    g->j0[12] = g->j0[13] = g->j0[14] = 0;
    g->j0[15] = 1;
    ghash_update(g, aad, aad_len);
}

/* GCTR from inc32(J0) (SP 800-38D 6.5). */
static void gctr(struct gcm *g, const uint8_t *in, size_t len, uint8_t *out)
{
    uint8_t cb[16], ks[16];
    memcpy(cb, g->j0, 16);
    for (size_t off = 0; off < len; off += 16) {
        for (int i = 15; i >= 12 && ++cb[i] == 0; i--)
            ;
        encrypt_block(g->rk, cb, ks);
        for (size_t i = 0; i < 16 && off + i < len; i++)
            out[off + i] = in[off + i] ^ ks[i];
    }
}

static void gcm_tag(struct gcm *g, size_t aad_len, size_t len, uint8_t tag[16])
{
    uint8_t lens[16], s[16], ek[16];
    uint64_t abits = (uint64_t)aad_len * 8, cbits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++) {
        lens[7 - i] = (uint8_t)(abits >> (8 * i));
        lens[15 - i] = (uint8_t)(cbits >> (8 * i));
    }
    ghash_update(g, lens, 16);
    store128(g->acc, s);
    encrypt_block(g->rk, g->j0, ek);
    for (int i = 0; i < 16; i++)
        tag[i] = s[i] ^ ek[i];
}

void aesgcm256_seal(const uint8_t key[32], const uint8_t iv[12], const uint8_t *aad, size_t aad_len,
                    const uint8_t *in, size_t len, uint8_t *out, uint8_t tag[16])
{
    struct gcm g;
    gcm_init(&g, key, iv, aad, aad_len);
    gctr(&g, in, len, out);
    ghash_update(&g, out, len);
    gcm_tag(&g, aad_len, len, tag);
}

int aesgcm256_open(const uint8_t key[32], const uint8_t iv[12], const uint8_t *aad, size_t aad_len,
                   const uint8_t *in, size_t len, const uint8_t tag[16], uint8_t *out)
{
    struct gcm g;
    uint8_t want[16], diff = 0;
    gcm_init(&g, key, iv, aad, aad_len);
    ghash_update(&g, in, len);
    gcm_tag(&g, aad_len, len, want);
    for (int i = 0; i < 16; i++)
        diff |= want[i] ^ tag[i];
    if (diff) {
        memset(out, 0, len);
        return -1;
    }
    gctr(&g, in, len, out);
    return 0;
}
