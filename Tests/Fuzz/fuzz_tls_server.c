/* fuzz_tls_server.c - a server TLS engine fed the input as ciphertext.
 *
 * Covers the record layer, the ClientHello parser, ALPN selection and the
 * chunk BIO under ASan/UBSan. The input is fed in three pieces with the
 * engine driven after each, so partial records are exercised too; any
 * plaintext that comes out is echoed back, as a proxy would. The server's
 * own randomness means only the first client flight can match a real
 * handshake; the seeds are such flights (Tests/Fuzz/seeds/tls_server/).
 *
 * The key and certificate below were generated for this target only (EC
 * P-256, self-signed, CN=localhost, 100 years); they protect nothing.
 */
#include "kopilot.h"

#include <stdio.h>
#include <stdlib.h>

static const char key_pem[] =
  "-----BEGIN PRIVATE KEY-----\n"
  "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgMeZNhAoihrV1fe99\n"
  "J42ufqdwgMgClkFCX4YdgpPoUUyhRANCAASBoGJ9yG1p187c8EIIbU++fE3SZcUz\n"
  "Zeh1QUSjvqR7Pr5cUkP/g6u3en5+N+C77H135MVXScGwhBZkeirsoLas\n"
  "-----END PRIVATE KEY-----\n"
  ;

static const char cert_pem[] =
  "-----BEGIN CERTIFICATE-----\n"
  "MIIBlDCCATugAwIBAgIUVVFGiumcxN2eNEfnP+SeYvrbfM0wCgYIKoZIzj0EAwIw\n"
  "FDESMBAGA1UEAwwJbG9jYWxob3N0MCAXDTI2MTEyNDIxMTkxMFoYDzIxMjYxMDMx\n"
  "MjExOTEwWjAUMRIwEAYDVQQDDAlsb2NhbGhvc3QwWTATBgcqhkjOPQIBBggqhkjO\n"
  "PQMBBwNCAASBoGJ9yG1p187c8EIIbU++fE3SZcUzZeh1QUSjvqR7Pr5cUkP/g6u3\n"
  "en5+N+C77H135MVXScGwhBZkeirsoLaso2kwZzAdBgNVHQ4EFgQUNJNNJmpyD0nX\n"
  "TUGJIrhcMbJIs7IwHwYDVR0jBBgwFoAUNJNNJmpyD0nXTUGJIrhcMbJIs7IwDwYD\n"
  "VR0TAQH/BAUwAwEB/zAUBgNVHREEDTALgglsb2NhbGhvc3QwCgYIKoZIzj0EAwID\n"
  "RwAwRAIgAkSO8kk1JVnETxIYL7Em/dSEyiY2P4hPQJ30+9X1SfkCIAg8ytizCVQg\n"
  "v3g4MgjmhXJXjGdsPB4EzdnEfBApF9/P\n"
  "-----END CERTIFICATE-----\n"
  ;

static kp_tls_ctx_t *ctx;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  static const char *const alpn[] = {"kopilot", "http/1.1"};
  kp_tls_ctx_options_t o = {0};
  char err[256];
  (void)argc;
  (void)argv;
  o.is_server = 1;
  o.cert_pem = cert_pem;
  o.key_pem = key_pem;
  o.alpn = alpn;
  o.alpn_count = 2;
  if (kp_tls_ctx_new(&ctx, &o, err, sizeof(err)) != 0) {
    fprintf(stderr, "fuzz_tls_server: %s\n", err);
    abort();
  }
  return 0;
}

static void drain(kp_tls_t *t) {
  kp_slice_t s;
  while (kp_tls_out_pop(t, &s)) kp_chunk_unref(s.chunk);
}

/* Returns 0 while the connection may go on. */
static int drive(kp_tls_t *t) {
  uint8_t buf[4096];
  int r = kp_tls_handshake(t);
  if (r == KP_EAGAIN) return 0;
  if (r != 0) return r;
  while ((r = kp_tls_read(t, buf, sizeof(buf))) > 0)
    if (kp_tls_write(t, buf, (size_t)r) != r) abort();
  if (r == KP_ECLOSED) kp_tls_shutdown(t);
  return r == KP_EAGAIN ? 0 : r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  kp_tls_t *t;
  size_t cuts[3], off = 0, i;
  if (kp_tls_new(&t, ctx, NULL) != 0) abort();
  cuts[0] = size / 3;
  cuts[1] = size - size / 3;
  cuts[2] = size;
  for (i = 0; i < 3; i++) {
    if (kp_tls_feed(t, data + off, cuts[i] - off, NULL) != 0) abort();
    off = cuts[i];
    if (drive(t) != 0) break;
    drain(t);
  }
  drain(t);
  /* Popping everything must leave the pending count at zero and no output
   * chunk held, whatever state the input drove the engine into. */
  if (kp_tls_out_pending(t) != 0) abort();
  kp_tls_free(t);
  return 0;
}
