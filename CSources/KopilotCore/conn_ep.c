/* conn_ep.c - a conn seen as a relay endpoint. */
#include "conn.h"
#include "relay.h"

static int64_t cep_write(void *h, const uint8_t *p, size_t n) {
  int rc = kp__conn_write(h, p, n);
  return rc < 0 ? rc : (int64_t)n;
}
static void cep_read(void *h, int on) { kp__conn_read(h, on); }
static uint64_t cep_pending(void *h) { return ((kp__conn_t *)h)->pending; }
static void cep_shutdown(void *h) { kp__conn_shutdown(h); }
static void cep_abort(void *h, int err) { kp__conn_close(h, err); }

/* Conns pause their reads; nothing to give back (no window). */
const kp__ep_ops_t kp__conn_ep_ops = {
    .write = cep_write,
    .read = cep_read,
    .consumed = NULL,
    .pending = cep_pending,
    .shutdown = cep_shutdown,
    .abort = cep_abort,
};
