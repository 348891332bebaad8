/* conn.c - TCP + TLS connections on the loop. See conn.h. */
#include "conn.h"

#include <stdio.h>
#include <unistd.h>

static const kp__conn_cbs_t no_cbs;

typedef struct conn_write {
  uv_write_t req;
  kp__conn_t *conn;
  size_t plain; /* plaintext bytes this write completes (the last one) */
  size_t mem;   /* bytes of the chunks it holds until the kernel takes them */
  unsigned nbufs;
  kp_slice_t slices[8];
} conn_write_t;

static void conn_handle_closed(uv_handle_t *h) {
  kp__conn_t *c = h->data;
  if (--c->handles_open > 0) return;
  kp__loop_undefer(c->loop, &c->flush);
  if (c->cbs->on_close) c->cbs->on_close(c, c->close_status);
  kp_tls_free(c->tls);
  c->tls = NULL;
  /* Closed while its name was being resolved: the resolver's callback
   * still holds the conn and frees it when it runs. */
  if (c->resolving) return;
  free(c);
}

static int conn_flush(kp__conn_t *c);

static void set_leave(kp__conn_t *c) {
  if (c->set == NULL) return;
  if (c->set_prev) c->set_prev->set_next = c->set_next;
  else c->set->head = c->set_next;
  if (c->set_next) c->set_next->set_prev = c->set_prev;
  c->set = NULL;
  c->set_prev = c->set_next = NULL;
}

void kp__conn_join(kp__conn_t *c, kp__conn_set_t *set) {
  set_leave(c);
  if (c->closing) return;
  c->set = set;
  c->set_prev = NULL;
  c->set_next = set->head;
  if (set->head) set->head->set_prev = c;
  set->head = c;
}

void kp__conn_close_all(kp__conn_set_t *set, int status) {
  while (set->head) kp__conn_close(set->head, status); /* each leaves */
}

void kp__conn_close(kp__conn_t *c, int status) {
  if (c->closing) return;
  set_leave(c); /* first: close_all relies on it */
  /* Corked bytes (a last GoAway, an error response) still get their one
   * try: uv_write writes at once when the socket has room. */
  if (c->flush.queued) (void)conn_flush(c);
  c->closing = 1;
  c->close_status = status;
  uv_close((uv_handle_t *)&c->timer, conn_handle_closed);
  uv_close((uv_handle_t *)&c->tcp, conn_handle_closed);
}

static void write_done(uv_write_t *req, int status) {
  conn_write_t *w = (conn_write_t *)req;
  kp__conn_t *c = w->conn;
  unsigned i;
  for (i = 0; i < w->nbufs; i++) kp_chunk_unref(w->slices[i].chunk);
  c->pending -= w->mem;
  if (status < 0) {
    kp__conn_close(c, status);
  } else {
    if (!c->closing && w->plain && c->cbs->on_written)
      c->cbs->on_written(c, w->plain);
    if (!c->closing && c->pending == 0 && c->cbs->on_drained)
      c->cbs->on_drained(c);
  }
  free(w);
}

/* Hands everything the TLS engine produced to the kernel, in writes of up
 * to 8 slices. From here `pending` counts the memory those writes hold (a
 * chunk per slice, often part-filled: a conn flushed every loop turn can
 * hold a 64 KiB chunk for a few KiB of records), not the plaintext, so a
 * reader that does not read pins no more than the bound its writers check.
 * The last write (libuv completes writes in order) reports the plaintext
 * corked so far written. */
static int conn_flush(kp__conn_t *c) {
  size_t plain = c->unflushed;
  c->unflushed = 0;
  c->pending -= plain;
  kp__loop_undefer(c->loop, &c->flush);
  while (kp_tls_out_pending(c->tls) > 0) {
    conn_write_t *w = malloc(sizeof(*w));
    uv_buf_t bufs[8];
    unsigned i;
    int rc;
    if (w == NULL) return KP_ENOMEM;
    w->conn = c;
    w->nbufs = 0;
    w->mem = 0;
    while (w->nbufs < 8 && kp_tls_out_pop(c->tls, &w->slices[w->nbufs]) == 1) {
      kp_slice_t *sl = &w->slices[w->nbufs];
      bufs[w->nbufs++] = uv_buf_init((char *)sl->base, (unsigned)sl->len);
      w->mem += kp_chunk_capacity(sl->chunk);
    }
    w->plain = kp_tls_out_pending(c->tls) > 0 ? 0 : plain;
    rc = uv_write(&w->req, (uv_stream_t *)&c->tcp, bufs, w->nbufs, write_done);
    if (rc != 0) {
      for (i = 0; i < w->nbufs; i++) kp_chunk_unref(w->slices[i].chunk);
      free(w);
      return rc;
    }
    c->pending += w->mem;
    if (w->plain) plain = 0;
  }
  if (plain && c->cbs->on_written) c->cbs->on_written(c, plain);
  return 0;
}

/* Writes are corked: what the loop's callbacks write to a conn during one
 * iteration is encrypted at once (the TLS engine appends small records to
 * one slice) but handed to the kernel once, just before the loop waits
 * again - one syscall for many mux frames instead of one each. */
static void conn_flush_deferred(kp__deferred_t *d) {
  kp__conn_t *c = (kp__conn_t *)((char *)d - offsetof(kp__conn_t, flush));
  if (c->closing) return;
  if (conn_flush(c) != 0) kp__conn_close(c, KP_EIO);
}

/* Bulk data should not wait for the end of a long iteration (the reader
 * downstream would idle meanwhile): past this much, the cork pops at once. */
#define CONN_CORK_MAX (128u * 1024)

static int conn_queue(kp__conn_t *c, size_t plain) {
  c->pending += plain;
  c->unflushed += plain;
  if (c->unflushed >= CONN_CORK_MAX) return conn_flush(c);
  c->flush.run = conn_flush_deferred;
  kp__loop_defer(c->loop, &c->flush);
  return 0;
}

int kp__conn_write(kp__conn_t *c, const uint8_t *data, size_t len) {
  int64_t rc;
  if (c->closing || c->shut) return KP_ECLOSED;
  if (len == 0) return 0;
  rc = kp_tls_write(c->tls, data, len);
  if (rc < 0) return (int)rc;
  return conn_queue(c, len);
}

/* libuv asks for a buffer only when the socket is readable, so a pooled
 * chunk is taken just for the read and an idle conn holds none. */
int kp__conn_writev(kp__conn_t *c, const uint8_t *const *bufs,
                    const size_t *lens, size_t n) {
  int64_t rc;
  size_t i, total = 0;
  if (c->closing || c->shut) return KP_ECLOSED;
  for (i = 0; i < n; i++) total += lens[i];
  if (total == 0) return 0;
  rc = kp_tls_writev(c->tls, bufs, lens, n);
  if (rc < 0) return (int)rc;
  return conn_queue(c, total);
}

static void conn_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  kp__conn_t *c = h->data;
  (void)hint;
  c->rchunk = kp_chunk_new(0);
  if (c->rchunk == NULL) {
    *buf = uv_buf_init(NULL, 0); /* libuv reports UV_ENOBUFS */
    return;
  }
  *buf = uv_buf_init((char *)kp_chunk_data(c->rchunk),
                     (unsigned)kp_chunk_capacity(c->rchunk));
}

static void conn_deliver_plaintext(kp__conn_t *c);

static void conn_handshake(kp__conn_t *c) {
  int rc = kp_tls_handshake(c->tls);
  if (conn_flush(c) != 0) {
    kp__conn_close(c, KP_EIO);
    return;
  }
  if (rc == KP_EAGAIN) return;
  if (rc != 0) {
    if (c->cbs->on_ready) c->cbs->on_ready(c, rc);
    kp__conn_close(c, rc);
    return;
  }
  c->ready = 1;
  kp__conn_set_timeout(c, 0);
  if (c->cbs->on_ready) c->cbs->on_ready(c, 0);
  /* Application data may have arrived with the last handshake flight. */
  if (!c->closing) conn_deliver_plaintext(c);
}

static void conn_deliver_plaintext(kp__conn_t *c) {
  while (!c->closing && c->reading && !c->eof) {
    kp_chunk_t *chunk = kp_chunk_new(0);
    size_t got = 0, cap;
    int rc = 0;
    if (chunk == NULL) {
      kp__conn_close(c, KP_ENOMEM);
      return;
    }
    cap = kp_chunk_capacity(chunk);
    while (got < cap) {
      rc = kp_tls_read(c->tls, kp_chunk_data(chunk) + got, cap - got);
      if (rc <= 0) break;
      got += (size_t)rc;
    }
    if (got == cap) rc = 1; /* full: go round again */
    if (got > 0) c->cbs->on_read(c, kp_chunk_data(chunk), got, chunk);
    kp_chunk_unref(chunk);
    /* Whatever the TLS engine wants to send (a key update, an alert). */
    if (!c->closing && kp_tls_out_pending(c->tls) > 0) conn_flush(c);
    if (c->closing) return;
    if (rc > 0) continue;
    if (rc == KP_EAGAIN) return;
    if (rc == KP_ECLOSED) {
      c->eof = 1;
      if (c->cbs->on_eof) c->cbs->on_eof(c);
      return;
    }
    if (rc < 0) {
      kp__conn_close(c, rc);
      return;
    }
  }
}

static void conn_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  kp__conn_t *c = s->data;
  kp_chunk_t *chunk = c->rchunk;
  int rc;
  (void)buf;
  c->rchunk = NULL;
  if (nread <= 0) kp_chunk_unref(chunk);
  if (nread == 0) return;
  if (nread < 0) {
    if (nread == UV_EOF) {
      uv_read_stop(s);
      if (!c->eof) {
        c->eof = 1;
        if (!c->ready) {
          kp__conn_close(c, KP_ECLOSED);
        } else if (c->cbs->on_eof) {
          c->cbs->on_eof(c);
        }
      }
      return;
    }
    kp__conn_close(c, (int)nread);
    return;
  }
  rc = kp_tls_feed(c->tls, kp_chunk_data(chunk), (size_t)nread, chunk);
  kp_chunk_unref(chunk); /* the engine holds its own reference */
  if (rc < 0) {
    kp__conn_close(c, rc);
    return;
  }
  if (!c->ready) {
    conn_handshake(c);
    return;
  }
  conn_deliver_plaintext(c);
}

void kp__conn_read(kp__conn_t *c, int on) {
  if (c->closing) return;
  if (on && !c->reading) {
    c->reading = 1;
    if (!c->eof) {
      uv_read_start((uv_stream_t *)&c->tcp, conn_alloc, conn_read);
      /* Plaintext the engine decrypted earlier but we did not take. */
      if (c->ready) conn_deliver_plaintext(c);
    }
  } else if (!on && c->reading) {
    c->reading = 0;
    /* During the handshake the socket must keep reading. */
    if (c->ready) uv_read_stop((uv_stream_t *)&c->tcp);
  }
}

static void shutdown_done(uv_shutdown_t *req, int status) {
  (void)status;
  free(req);
}

void kp__conn_shutdown(kp__conn_t *c) {
  uv_shutdown_t *req;
  if (c->closing || c->shut) return;
  c->shut = 1;
  kp_tls_shutdown(c->tls);
  /* Everything corked goes first, then close_notify, then the FIN. */
  conn_flush(c);
  req = malloc(sizeof(*req));
  if (req == NULL || uv_shutdown(req, (uv_stream_t *)&c->tcp, shutdown_done) != 0)
    free(req);
}

static void conn_timeout(uv_timer_t *t) {
  kp__conn_t *c = t->data;
  if (c->cbs->on_timeout) c->cbs->on_timeout(c);
  else kp__conn_close(c, KP_ETIMEDOUT);
}

void kp__conn_set_timeout(kp__conn_t *c, uint64_t ms) {
  if (c->closing) return;
  c->timeout_ms = ms;
  if (ms == 0) {
    uv_timer_stop(&c->timer);
  } else {
    uv_timer_start(&c->timer, conn_timeout, ms, 0);
  }
}

const char *kp__conn_alpn(kp__conn_t *c, size_t *len) {
  return (const char *)kp_tls_alpn(c->tls, len);
}

static int conn_new(kp__conn_t **out, kp_loop_t *loop, struct kp_tls_ctx *ctx,
                    const char *server_name, const kp__conn_cbs_t *cbs,
                    void *ud) {
  kp__conn_t *c = calloc(1, sizeof(*c));
  int rc;
  if (c == NULL) return KP_ENOMEM;
  rc = kp_tls_new(&c->tls, ctx, server_name);
  if (rc != 0) {
    free(c);
    return rc;
  }
  c->loop = loop;
  c->cbs = cbs;
  c->ud = ud;
  uv_tcp_init(kp__loop_uv(loop), &c->tcp);
  uv_timer_init(kp__loop_uv(loop), &c->timer);
  c->tcp.data = c;
  c->timer.data = c;
  c->handles_open = 2;
  *out = c;
  return 0;
}

static void conn_peer_name(kp__conn_t *c) {
  struct sockaddr_storage ss;
  int len = sizeof(ss);
  char ip[48] = "?";
  int port = 0;
  if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
    if (ss.ss_family == AF_INET) {
      struct sockaddr_in *a = (struct sockaddr_in *)&ss;
      uv_ip4_name(a, ip, sizeof(ip));
      port = ntohs(a->sin_port);
    } else if (ss.ss_family == AF_INET6) {
      struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
      uv_ip6_name(a, ip, sizeof(ip));
      port = ntohs(a->sin6_port);
    }
  }
  snprintf(c->peer, sizeof(c->peer), "%s:%d", ip, port);
}

/* A handshake that does not finish in time is a half-open or hostile peer. */
#define KP__HANDSHAKE_TIMEOUT_MS 10000

int kp__conn_accept(kp__conn_t **out, kp_loop_t *loop, uv_stream_t *server,
                    struct kp_tls_ctx *ctx, const kp__conn_cbs_t *cbs,
                    void *ud) {
  kp__conn_t *c;
  int rc = conn_new(&c, loop, ctx, NULL, cbs, ud);
  if (rc != 0) return rc;
  rc = uv_accept(server, (uv_stream_t *)&c->tcp);
  if (rc != 0) {
    c->cbs = &no_cbs;
    kp__conn_close(c, rc);
    return rc;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  conn_peer_name(c);
  kp__conn_set_timeout(c, KP__HANDSHAKE_TIMEOUT_MS);
  c->reading = 1;
  uv_read_start((uv_stream_t *)&c->tcp, conn_alloc, conn_read);
  *out = c;
  return 0;
}

static void connect_done(uv_connect_t *req, int status) {
  kp__conn_t *c = req->data;
  free(req);
  if (c->closing) return;
  if (status != 0) {
    if (c->cbs->on_ready) c->cbs->on_ready(c, status);
    kp__conn_close(c, status);
    return;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  conn_peer_name(c);
  c->reading = 1;
  uv_read_start((uv_stream_t *)&c->tcp, conn_alloc, conn_read);
  conn_handshake(c); /* sends the ClientHello */
}

int kp__conn_connect(kp__conn_t **out, kp_loop_t *loop,
                     const struct sockaddr *addr, struct kp_tls_ctx *ctx,
                     const char *server_name, const kp__conn_cbs_t *cbs,
                     void *ud) {
  kp__conn_t *c;
  uv_connect_t *req;
  int rc = conn_new(&c, loop, ctx, server_name, cbs, ud);
  if (rc != 0) return rc;
  c->is_client = 1;
  req = malloc(sizeof(*req));
  if (req == NULL) {
    kp__conn_close(c, KP_ENOMEM);
    return KP_ENOMEM;
  }
  req->data = c;
  rc = uv_tcp_connect(req, &c->tcp, addr, connect_done);
  if (rc != 0) {
    free(req);
    c->cbs = &no_cbs; /* a function that returns an error fires no callback */
    kp__conn_close(c, rc);
    return rc;
  }
  kp__conn_set_timeout(c, KP__HANDSHAKE_TIMEOUT_MS);
  *out = c;
  return 0;
}

/* ---- moving a conn to another loop ----
 *
 * A connection is tied to its loop only by its uv handles; the TLS engine
 * does no I/O, so at a point where nothing is queued to write, the socket
 * (a dup of it: the handle's own fd closes with the handle) and the engine
 * can go to another loop, which wraps them in a new conn. libuv removes the
 * fd from this loop's epoll set before it closes it, so the dup is polled by
 * the new loop only. */

int kp__conn_movable(const kp__conn_t *c) {
  return c->ready && !c->closing && !c->eof && !c->shut && c->pending == 0 &&
         !c->flush.queued && kp_tls_out_pending(c->tls) == 0;
}

int kp__conn_detach(kp__conn_t *c, uv_os_sock_t *fd, struct kp_tls **tls) {
  uv_os_fd_t raw;
  int dup_fd;
  if (!kp__conn_movable(c)) return KP_EINVAL;
  if (uv_fileno((uv_handle_t *)&c->tcp, &raw) != 0) return KP_EINVAL;
  dup_fd = dup(raw);
  if (dup_fd < 0) return KP_ENOMEM;
  kp__conn_read(c, 0);
  *fd = dup_fd;
  *tls = c->tls;
  c->tls = NULL; /* conn_handle_closed frees no engine */
  kp__conn_close(c, 0);
  return 0;
}

int kp__conn_adopt(kp__conn_t **out, kp_loop_t *loop, uv_os_sock_t fd,
                   struct kp_tls *tls, const kp__conn_cbs_t *cbs, void *ud) {
  kp__conn_t *c = calloc(1, sizeof(*c));
  int rc;
  if (c == NULL) return KP_ENOMEM;
  c->loop = loop;
  c->cbs = cbs;
  c->ud = ud;
  uv_tcp_init(kp__loop_uv(loop), &c->tcp);
  uv_timer_init(kp__loop_uv(loop), &c->timer);
  c->tcp.data = c;
  c->timer.data = c;
  c->handles_open = 2;
  rc = uv_tcp_open(&c->tcp, fd);
  if (rc != 0) {
    /* The engine is the caller's again; the fd is not ours either. */
    c->cbs = &no_cbs;
    kp__conn_close(c, rc);
    return rc;
  }
  c->tls = tls;
  c->ready = 1;
  conn_peer_name(c);
  *out = c;
  return 0;
}

/* ---- dialing by name ---- */

typedef struct dial {
  uv_getaddrinfo_t req;
  kp__conn_t *conn; /* created up front so the caller has a handle */
  kp_loop_t *loop;
  int port;
} dial_t;

static void dial_resolved(uv_getaddrinfo_t *req, int status,
                          struct addrinfo *res) {
  dial_t *d = req->data;
  kp__conn_t *c = d->conn;
  uv_connect_t *creq;
  int rc = status;
  c->resolving = 0;
  if (c->closing) {
    if (c->handles_open == 0) free(c); /* its close already ran */
    goto out;
  }
  if (rc == 0) {
    if (res->ai_family == AF_INET)
      ((struct sockaddr_in *)res->ai_addr)->sin_port = htons((uint16_t)d->port);
    else
      ((struct sockaddr_in6 *)res->ai_addr)->sin6_port = htons((uint16_t)d->port);
    creq = malloc(sizeof(*creq));
    rc = KP_ENOMEM;
    if (creq != NULL) {
      creq->data = c;
      rc = uv_tcp_connect(creq, &c->tcp, res->ai_addr, connect_done);
      if (rc != 0) free(creq);
    }
  }
  if (rc != 0) {
    if (c->cbs->on_ready) c->cbs->on_ready(c, rc);
    kp__conn_close(c, rc);
  }
out:
  uv_freeaddrinfo(res);
  free(d);
}

int kp__conn_dial(kp__conn_t **out, kp_loop_t *loop, const char *host,
                  int port, struct kp_tls_ctx *ctx, const char *server_name,
                  const kp__conn_cbs_t *cbs, void *ud) {
  kp__conn_t *c;
  dial_t *d;
  struct addrinfo hints;
  int rc = conn_new(&c, loop, ctx, server_name, cbs, ud);
  if (rc != 0) return rc;
  c->is_client = 1;
  d = malloc(sizeof(*d));
  if (d == NULL) {
    c->cbs = &no_cbs;
    kp__conn_close(c, KP_ENOMEM);
    return KP_ENOMEM;
  }
  d->req.data = d;
  d->conn = c;
  d->loop = loop;
  d->port = port;
  memset(&hints, 0, sizeof(hints));
  hints.ai_socktype = SOCK_STREAM;
  rc = uv_getaddrinfo(kp__loop_uv(loop), &d->req, dial_resolved, host, NULL,
                      &hints);
  if (rc != 0) {
    free(d);
    c->cbs = &no_cbs;
    kp__conn_close(c, rc);
    return rc;
  }
  c->resolving = 1;
  kp__conn_set_timeout(c, KP__HANDSHAKE_TIMEOUT_MS);
  *out = c;
  return 0;
}
