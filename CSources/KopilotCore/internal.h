/* internal.h - private helpers shared by the core's source files. */
#ifndef KOPILOT_INTERNAL_H
#define KOPILOT_INTERNAL_H

#include "kopilot.h"

#include <stdlib.h>
#include <string.h>

#define KP__ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define KP__MIN(a, b) ((a) < (b) ? (a) : (b))
#define KP__MAX(a, b) ((a) > (b) ? (a) : (b))

/* Big-endian loads and stores, portable (no unaligned access, no bswap
 * intrinsics), so the codecs behave the same on x86_64 and ARM64. */
static inline uint16_t kp__load16(const uint8_t *p) {
  return (uint16_t)((uint16_t)p[0] << 8 | p[1]);
}
static inline uint32_t kp__load32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
         (uint32_t)p[3];
}
static inline uint64_t kp__load64(const uint8_t *p) {
  return (uint64_t)kp__load32(p) << 32 | kp__load32(p + 4);
}
static inline void kp__store16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}
static inline void kp__store32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}
static inline void kp__store64(uint8_t *p, uint64_t v) {
  kp__store32(p, (uint32_t)(v >> 32));
  kp__store32(p + 4, (uint32_t)v);
}

/* ASCII case-insensitive comparison of a counted string with a C string. */
int kp__strieq(const char *a, size_t alen, const char *b);

/* Whether a header line named `name` (any of several) lists `token` in its
 * comma-separated value (RFC 9110 5.6.1: elements OWS-trimmed; token and
 * name compared case-insensitively). The one list tokenizer of the core. */
struct kp_http_header;
int kp__headers_list(const struct kp_http_header *h, size_t n,
                     const char *name, const char *token, size_t token_len);

/* Moves a parsed head's pointers from the buffer `from` to a copy of its
 * bytes at `to` (the same offsets), so a head parsed once can follow its
 * bytes to another owner. */
struct kp_http_head;
void kp__http_head_rebase(struct kp_http_head *h, const uint8_t *from,
                          uint8_t *to);

/* Draws n bytes from the memory budget (kp_memory_budget_set): 1 when
 * they fit (or there is no budget), 0 when they would pass it. */
int kp__budget_take(uint64_t n);
/* Gives back n bytes drawn with kp__budget_take. */
void kp__budget_give(uint64_t n);

#endif
