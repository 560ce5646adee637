/*
 * aesgcm.h - AES-256-GCM for the guest runtime (SEV-SNP guest messages are
 * sealed with it under a VMPCK: SNP ABI "guest messages", svmsim/sev/snp_crypto.py).
 * Written from FIPS 197 (AES) and NIST SP 800-38D (GCM), 96-bit IVs only,
 * 16-byte tags; portable C, no AES-NI.
 */
#ifndef AESGCM_H
#define AESGCM_H
#include "rt.h"

void aesgcm256_seal(const uint8_t key[32], const uint8_t iv[12], const uint8_t *aad, size_t aad_len,
                    const uint8_t *in, size_t len, uint8_t *out, uint8_t tag[16]);
/* 0 if the tag authenticates (and out holds the plaintext), -1 if not (out is zeroed). */
int aesgcm256_open(const uint8_t key[32], const uint8_t iv[12], const uint8_t *aad, size_t aad_len,
                   const uint8_t *in, size_t len, const uint8_t tag[16], uint8_t *out);
#endif
