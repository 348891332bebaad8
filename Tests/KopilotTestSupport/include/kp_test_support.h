/* Helpers for the tests only: hashing and guard-page buffers. */
#ifndef KP_TEST_SUPPORT_H
#define KP_TEST_SUPPORT_H
#include <stddef.h>
#include <stdint.h>

/* SHA-256 of data[0..len) into out (OpenSSL). */
void kpt_sha256(const void *data, size_t len, uint8_t out[32]);

/* Incremental SHA-256: new, update, final (final frees the context). */
typedef struct kpt_sha256_ctx kpt_sha256_ctx_t;
kpt_sha256_ctx_t *kpt_sha256_new(void);
void kpt_sha256_update(kpt_sha256_ctx_t *c, const void *data, size_t len);
void kpt_sha256_final(kpt_sha256_ctx_t *c, uint8_t out[32]);

/* Copies data into memory that ends exactly at an inaccessible page, so a
 * decoder that reads past the end crashes instead of reading garbage.
 * Free with kpt_guarded_free(p, len). */
uint8_t *kpt_guarded_copy(const void *data, size_t len);
void kpt_guarded_free(uint8_t *p, size_t len);
#endif
