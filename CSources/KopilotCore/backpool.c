/* backpool.c - back connections and their keep-alive pool. See backpool.h. */
#include "backpool.h"

void kp__backpool_init(kp__backpool_t *p, const kp__backpool_hooks_t *hooks,
                       void *ud, uint32_t max_idle, uint64_t idle_ms) {
  memset(p, 0, sizeof(*p));
  p->hooks = hooks;
  p->ud = ud;
  p->max_idle = max_idle;
  p->idle_ms = idle_ms;
}

static void pool_remove(kp__back_t *b) {
  kp__backpool_t *p = b->pool;
  if (b->prev) b->prev->next = b->next;
  else p->idle = b->next;
  if (b->next) b->next->prev = b->prev;
  b->prev = b->next = NULL;
  b->pooled = 0;
  p->idle_count--;
}

/* Keeps a conn that ended at a request boundary. Returns 0 when it is not
 * kept (the pool is full or closed, the conn is ending): the caller closes
 * it. A full pool turns the returning conn away rather than evicting an
 * older one: either way one conn closes, and this needs no bookkeeping. */
static int pool_put(kp__back_t *b) {
  kp__backpool_t *p = b->pool;
  kp__conn_t *c = b->conn;
  if (p->closed || c->closing || c->eof || c->shut || p->idle_count >= p->max_idle)
    return 0;
  b->pooled = 1;
  b->prev = NULL;
  b->next = p->idle;
  if (p->idle) p->idle->prev = b;
  p->idle = b;
  p->idle_count++;
  kp__conn_set_timeout(c, p->idle_ms);
  /* The relay may have paused it; an idle conn reads to see a close (and
   * bytes nobody asked for, which close it too: back_read). */
  kp__conn_read(c, 1);
  return 1;
}

/* The most recently used idle conn with this key that is not closing, or
 * NULL. A conn that is closing stays listed (skipped, and counted against
 * the bound) until its on_close takes it off. */
static kp__back_t *pool_take(kp__backpool_t *p, const char *key) {
  kp__back_t *b;
  for (b = p->idle; b; b = b->next) {
    if (b->conn->closing || b->conn->eof || strcmp(b->key, key) != 0) continue;
    pool_remove(b);
    kp__conn_set_timeout(b->conn, 0);
    return b;
  }
  return NULL;
}

void kp__backpool_close(kp__backpool_t *p) {
  kp__back_t *b;
  p->closed = 1;
  for (b = p->idle; b; b = b->next) kp__conn_close(b->conn, KP_ECLOSED);
}

int kp__backpool_wait_empty(kp__backpool_t *p) {
  kp__backpool_close(p);
  if (p->idle == NULL) return 1;
  p->waiting = 1;
  return 0;
}

/* Methods a client may send twice (RFC 9110 9.2.2) that kube-apiserver
 * serves; PUT is idempotent too but carries a body, which is never
 * resent. */
int kp__backpool_idempotent(const kp_http_head_t *h) {
  static const char *const m[] = {"GET", "HEAD", "OPTIONS", "DELETE", NULL};
  const char *const *s;
  for (s = m; *s; s++)
    if (h->method_len == strlen(*s) && memcmp(h->method, *s, h->method_len) == 0)
      return 1;
  return 0;
}

/* The request must stop pointing at a conn that is going away: the relay
 * can outlive it. */
static void back_detach(kp__back_t *b) {
  kp__backreq_t *q = b->req;
  b->req = NULL;
  if (q && q->back == b) q->back = NULL;
}

static void back_ready(kp__conn_t *c, int status) {
  kp__back_t *b = c->ud;
  kp__backreq_t *q = b->req;
  kp__ep_t ep = {&kp__conn_ep_ops, c};
  if (q == NULL) return;
  if (status != 0) {
    /* The conn closes next (conn.c); the caller hears now. */
    if (b->hooks->note) b->hooks->note(q, c, status);
    back_detach(b);
    b->hooks->fail(q, status);
    return;
  }
  b->attached = 1;
  kp__relay_attach(q->relay, ep, q->head, q->head_len);
}

static void back_read(kp__conn_t *c, const uint8_t *p, size_t n,
                      kp_chunk_t *chunk) {
  kp__back_t *b = c->ud;
  if (b->pooled) {
    /* An idle conn was sent bytes nobody asked for: whatever the server
     * thinks the next response is, it cannot be trusted with a request. */
    kp__conn_close(c, KP_EPROTO);
    return;
  }
  if (b->req && b->attached) kp__relay_back_data(b->req->relay, p, n, chunk);
}

static void back_eof(kp__conn_t *c) {
  kp__back_t *b = c->ud;
  if (b->pooled) kp__conn_close(c, 0); /* the server closed an idle conn */
  else if (b->req && b->attached) kp__relay_back_eof(b->req->relay);
}

static void back_written(kp__conn_t *c, size_t n) {
  kp__back_t *b = c->ud;
  (void)n;
  if (b->req && b->attached) kp__relay_writable(b->req->relay);
}

/* An idle conn leaves the list here; while the owner waits for the list to
 * run empty, the last one fires `drained`. A conn with a request tells the
 * relay, or the owner when the request never went out. A conn that had
 * neither (released to close, or orphaned) does not touch the pool: an
 * owner without a `closed` hook may be gone by now (b->hooks is static). */
static void back_closed(kp__conn_t *c, int status) {
  kp__back_t *b = c->ud;
  const kp__backpool_hooks_t *h = b->hooks;
  kp__backreq_t *q = b->req;
  if (b->pooled) {
    kp__backpool_t *p = b->pool;
    pool_remove(b);
    if (p->waiting && p->idle == NULL) {
      p->waiting = 0;
      if (h->drained) h->drained(p);
    }
  } else if (q) {
    back_detach(b);
    if (h->note) h->note(q, c, status);
    if (b->attached) kp__relay_back_closed(q->relay, status);
    else h->fail(q, status ? status : KP_ECLOSED); /* closed while dialing */
  }
  if (h->closed) h->closed(b->pool);
  free(b);
}

const kp__conn_cbs_t kp__back_conn_cbs = {
    .on_ready = back_ready,
    .on_read = back_read,
    .on_eof = back_eof,
    .on_written = back_written,
    .on_close = back_closed,
};

/* A new conn for q's current attempt; it attaches in back_ready. */
static int back_dial(kp__backpool_t *p, kp__backreq_t *q) {
  size_t klen = strlen(q->key);
  kp__back_t *b = calloc(1, sizeof(*b) + klen + 1);
  int rc;
  if (b == NULL) return KP_ENOMEM;
  b->pool = p;
  b->hooks = p->hooks;
  b->req = q;
  memcpy(b->key, q->key, klen + 1);
  rc = p->hooks->dial(p, q, b);
  if (rc != 0) {
    free(b);
    return rc;
  }
  q->back = b;
  return 0;
}

int kp__backreq_start(kp__backpool_t *p, kp__backreq_t *q, kp__relay_t *r) {
  kp__back_t *b = pool_take(p, q->key);
  q->relay = r;
  q->retried = 0;
  if (b != NULL) {
    kp__ep_t ep = {&kp__conn_ep_ops, b->conn};
    q->reused = 1;
    q->back = b;
    b->req = q;
    b->attached = 1;
    kp__relay_attach(r, ep, q->head, q->head_len);
    return 0;
  }
  q->reused = 0;
  return back_dial(p, q);
}

void kp__backreq_release(kp__backreq_t *q, kp__ep_t back,
                         kp__relay_back_end_t how) {
  kp__conn_t *c = back.h;
  kp__back_t *b = c->ud;
  b->req = NULL;
  b->attached = 0;
  if (q->back == b) q->back = NULL;
  if (how == KP__RELAY_BACK_REUSABLE && pool_put(b)) return;
  kp__conn_close(c, 0);
}

/* A pooled conn that died under a request it had not answered: the server
 * closed it as the request crossed (its idle timeout, a restart). Once, on
 * a new conn, and only for a method that may be sent twice; a fresh conn
 * that dies is the server's answer and gets the 502. */
int kp__backreq_retry(kp__backpool_t *p, kp__backreq_t *q) {
  if (!q->reused || !q->idempotent || q->retried) return 0;
  q->retried = 1;
  q->reused = 0;
  return back_dial(p, q) == 0;
}

void kp__backreq_orphan(kp__backreq_t *q) {
  kp__back_t *b = q->back;
  if (b == NULL) return;
  q->back = NULL;
  b->req = NULL; /* a dial still running sees no request */
  kp__conn_close(b->conn, KP_ECLOSED);
}

void kp__backreq_clear_head(kp__backreq_t *q) {
  if (q->head) memset(q->head, 0, q->head_len);
  free(q->head);
  q->head = NULL;
  q->head_len = 0;
}
