#include "kp_test_support.h"

#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

void kpt_sha256(const void *data, size_t len, uint8_t out[32]) {
  unsigned int n = 32;
  EVP_Digest(data, len, out, &n, EVP_sha256(), NULL);
}

struct kpt_sha256_ctx {
  EVP_MD_CTX *md;
};

kpt_sha256_ctx_t *kpt_sha256_new(void) {
  kpt_sha256_ctx_t *c = malloc(sizeof(*c));
  c->md = EVP_MD_CTX_new();
  EVP_DigestInit_ex(c->md, EVP_sha256(), NULL);
  return c;
}
void kpt_sha256_update(kpt_sha256_ctx_t *c, const void *data, size_t len) {
  EVP_DigestUpdate(c->md, data, len);
}
void kpt_sha256_final(kpt_sha256_ctx_t *c, uint8_t out[32]) {
  unsigned int n = 32;
  EVP_DigestFinal_ex(c->md, out, &n);
  EVP_MD_CTX_free(c->md);
  free(c);
}

static size_t page_size(void) { return (size_t)sysconf(_SC_PAGESIZE); }

static size_t guarded_span(size_t len) {
  size_t ps = page_size();
  return ((len + ps - 1) / ps + 1) * ps;
}

uint8_t *kpt_guarded_copy(const void *data, size_t len) {
  size_t span = guarded_span(len), ps = page_size();
  uint8_t *base = mmap(NULL, span, PROT_READ | PROT_WRITE,
                       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) return NULL;
  mprotect(base + span - ps, ps, PROT_NONE);
  uint8_t *p = base + span - ps - len;
  if (len) memcpy(p, data, len);
  return p;
}

void kpt_guarded_free(uint8_t *p, size_t len) {
  size_t span = guarded_span(len), ps = page_size();
  uint8_t *base = p + len + ps - span;
  munmap(base, span);
}
