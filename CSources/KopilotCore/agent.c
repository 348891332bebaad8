/* agent.c - the agent's data plane: one session to the hub; each stream the
 * hub opens is an HTTP/1.1 connection whose requests go to the member's API
 * server with the agent's own credentials. */
#include "session.h"

#include <stdio.h>

struct kp_agent {
  kp_loop_t *loop;
  kp_agent_config_t cfg;
  char *hub_host, *hub_path, *up_host;
  kp_agent_callbacks_t cbs;
  void *ud;
  kp_tls_ctx_t *hub_tls, *up_tls;
  uv_mutex_t mu; /* guards token */
  char *token;
  kp__conn_t *dialing; /* the conn during TLS + WebSocket handshake */
  uint8_t *hs_buf;     /* 101 response head being read */
  size_t hs_len;
  char ws_key[25];
  kp__sess_t *sess;
  int freeing;
  int draining;      /* GoAway sent: close once streams finish */
  uint64_t drain_deadline;
  uv_timer_t drain_timer;
  int drain_timer_on;
  uv_sem_t done;
  /* The upstream keep-alive pool (loop thread only): idle conns, most
   * recently used first; see "upstream connections" below. */
  struct up_conn *idle;
  uint32_t idle_count;
  int pool_freeing; /* kp_agent_free waits for the list to run empty */
};

/* ---- upstream connections and their keep-alive pool ---- */

/* A cold request costs a TCP and a TLS handshake with the API server; an
 * exchange that ended at a request boundary (the relay says REUSABLE)
 * leaves its conn in a pool for the next request instead. The pool is a
 * LIFO list: the most recently used conn is taken first, so a light load
 * keeps reusing a few warm conns and the rest age out by their idle
 * deadline (the conn's own timer, so no pool-wide timer to manage). Idle
 * conns keep reading: a server that closes one (its idle timeout, a
 * restart) is seen at once and the conn leaves the pool. One that closed
 * as a request crossed it (EOF or reset before a response byte) is retried
 * once on a new conn when the request may be sent twice. */
#define UP_MAX_IDLE_DEFAULT 256
#define UP_IDLE_MS_DEFAULT 60000

typedef struct up_conn {
  kp_agent_t *agent;
  kp__conn_t *conn;
  kp__relay_t *relay; /* the request it carries; NULL when idle or orphaned */
  struct up_conn *prev, *next; /* the agent's idle list, while pooled */
  unsigned attached : 1, pooled : 1;
} up_conn_t;

typedef struct agent_front {
  kp_agent_t *agent;
  kp_mux_stream_t *st;
  up_conn_t *up;  /* the current request's conn, dialing or attached */
  uint8_t *head;  /* its rewritten head (owned), kept for a second attempt */
  size_t head_len;
  unsigned idempotent : 1, /* the method may be sent twice */
      reused : 1,          /* the current attempt's conn came from the pool */
      retried : 1;         /* the request was sent again once already */
} agent_front_t;

static void front_head_free(agent_front_t *f) {
  /* The head holds the agent's bearer token. */
  if (f->head) memset(f->head, 0, f->head_len);
  free(f->head);
  f->head = NULL;
  f->head_len = 0;
}

static uint32_t pool_max(const kp_agent_t *a) {
  return a->cfg.upstream_max_idle ? a->cfg.upstream_max_idle : UP_MAX_IDLE_DEFAULT;
}

static void pool_remove(up_conn_t *u) {
  kp_agent_t *a = u->agent;
  if (u->prev) u->prev->next = u->next;
  else a->idle = u->next;
  if (u->next) u->next->prev = u->prev;
  u->prev = u->next = NULL;
  u->pooled = 0;
  a->idle_count--;
}

/* An idle conn leaves the list when it is taken or, if it closes instead,
 * in its on_close: a conn that is closing stays listed (skipped, and
 * counted against the bound) until it is gone. While the agent is being
 * freed, the list running empty is what kp_agent_free waits for. */
static void pool_closed(up_conn_t *u) {
  kp_agent_t *a = u->agent;
  pool_remove(u);
  if (a->pool_freeing && a->idle == NULL) uv_sem_post(&a->done);
}

/* Keeps a conn that ended at a request boundary. Returns 0 when it is not
 * kept (the pool is full or closing, the conn is ending): the caller closes
 * it. A full pool turns the returning conn away rather than evicting an
 * older one: either way one conn closes, and this needs no bookkeeping. */
static int pool_put(up_conn_t *u) {
  kp_agent_t *a = u->agent;
  kp__conn_t *c = u->conn;
  uint64_t idle_ms;
  if (a->freeing || a->draining || c->closing || c->eof || c->shut ||
      a->idle_count >= pool_max(a))
    return 0;
  u->pooled = 1;
  u->prev = NULL;
  u->next = a->idle;
  if (a->idle) a->idle->prev = u;
  a->idle = u;
  a->idle_count++;
  idle_ms = a->cfg.upstream_idle_ms ? a->cfg.upstream_idle_ms : UP_IDLE_MS_DEFAULT;
  kp__conn_set_timeout(c, idle_ms);
  /* The relay may have paused it; an idle conn reads to see a close (and
   * bytes nobody asked for, which close it too: up_read). */
  kp__conn_read(c, 1);
  return 1;
}

/* The most recently used idle conn that is not closing, or NULL. */
static up_conn_t *pool_take(kp_agent_t *a) {
  up_conn_t *u;
  for (u = a->idle; u; u = u->next) {
    if (u->conn->closing || u->conn->eof) continue;
    pool_remove(u);
    kp__conn_set_timeout(u->conn, 0);
    return u;
  }
  return NULL;
}

/* Closes every idle conn (shutdown, free); each leaves the list as it
 * closes. */
static void pool_close_all(kp_agent_t *a) {
  up_conn_t *u;
  for (u = a->idle; u; u = u->next) kp__conn_close(u->conn, KP_ECLOSED);
}

/* The front record must stop pointing at an upstream conn that is going
 * away: the relay can outlive it. */
static void up_detach(up_conn_t *u) {
  agent_front_t *f;
  if (u->relay == NULL) return;
  f = kp__relay_user_data(u->relay);
  if (f->up == u) f->up = NULL;
}

/* The API server could not be reached: the caller gets a 502 Status and
 * the conn closes (up_closed frees u). */
static void up_fail(up_conn_t *u, int status) {
  kp__relay_t *r = u->relay;
  char msg[256];
  size_t n;
  uint8_t *resp;
  snprintf(msg, sizeof(msg), "kopilot-agent: cannot reach the API server: %s",
           kp_strerror(status));
  up_detach(u);
  u->relay = NULL;
  resp = kp__http_build_status(502, "ServiceUnavailable", msg, 1, &n);
  if (resp) kp__relay_respond(r, resp, n, 1);
  else kp__relay_abort(r, KP_ENOMEM);
  free(resp);
}

static void up_ready(kp__conn_t *c, int status) {
  up_conn_t *u = c->ud;
  kp__ep_t ep = {&kp__conn_ep_ops, c};
  agent_front_t *f;
  if (u->relay == NULL) return;
  if (status != 0) {
    up_fail(u, status);
    return;
  }
  f = kp__relay_user_data(u->relay);
  u->attached = 1;
  kp__relay_attach(u->relay, ep, f->head, f->head_len);
}

static void up_read(kp__conn_t *c, const uint8_t *p, size_t n,
                    kp_chunk_t *chunk) {
  up_conn_t *u = c->ud;
  if (u->pooled) {
    /* An idle conn was sent bytes nobody asked for: whatever the server
     * thinks the next response is, it cannot be trusted with a request. */
    kp__conn_close(c, KP_EPROTO);
    return;
  }
  if (u->relay && u->attached) kp__relay_back_data(u->relay, p, n, chunk);
}
static void up_eof(kp__conn_t *c) {
  up_conn_t *u = c->ud;
  if (u->pooled) kp__conn_close(c, 0); /* the server closed an idle conn */
  else if (u->relay && u->attached) kp__relay_back_eof(u->relay);
}
static void up_written(kp__conn_t *c, size_t n) {
  up_conn_t *u = c->ud;
  (void)n;
  if (u->relay && u->attached) kp__relay_writable(u->relay);
}
static void up_closed(kp__conn_t *c, int status) {
  up_conn_t *u = c->ud;
  if (u->pooled) {
    pool_closed(u);
  } else {
    up_detach(u);
    if (u->relay && u->attached) kp__relay_back_closed(u->relay, status);
    else if (u->relay) up_fail(u, status ? status : KP_ECLOSED); /* closed while dialing */
  }
  free(u);
}

static const kp__conn_cbs_t up_cbs = {
    .on_ready = up_ready,
    .on_read = up_read,
    .on_eof = up_eof,
    .on_written = up_written,
    .on_close = up_closed,
};

/* Dials a new conn for the front's current request; it attaches when the
 * TLS handshake is done (up_ready). A function that returns an error fires
 * no callback. */
static int up_dial(agent_front_t *f, kp__relay_t *r) {
  kp_agent_t *a = f->agent;
  up_conn_t *u = calloc(1, sizeof(*u));
  int rc;
  if (u == NULL) return KP_ENOMEM;
  u->agent = a;
  u->relay = r;
  rc = kp__conn_dial(&u->conn, a->loop, a->up_host, a->cfg.upstream_port,
                     a->up_tls, a->up_host, &up_cbs, u);
  if (rc != 0) {
    free(u);
    return rc;
  }
  f->up = u;
  return 0;
}

/* ---- streams from the hub ---- */

/* Methods a client may send twice (RFC 9110 9.2.2) that kube-apiserver
 * serves; PUT is idempotent too but carries a body, which is never
 * resent. */
static int method_idempotent(const kp_http_head_t *h) {
  static const char *const m[] = {"GET", "HEAD", "OPTIONS", "DELETE", NULL};
  const char *const *p;
  for (p = m; *p; p++)
    if (h->method_len == strlen(*p) && memcmp(h->method, *p, h->method_len) == 0)
      return 1;
  return 0;
}

static void af_on_request(kp__relay_t *r, const kp_http_head_t *head,
                          const uint8_t *raw, size_t raw_len) {
  agent_front_t *f = kp__relay_user_data(r);
  kp_agent_t *a = f->agent;
  static const char *const drop[] = {"authorization", "host", NULL};
  char extra[8192];
  int n;
  up_conn_t *u;
  (void)raw;
  (void)raw_len;
  uv_mutex_lock(&a->mu);
  if (a->token && a->token[0])
    n = snprintf(extra, sizeof(extra), "Host: %s:%d\r\nAuthorization: Bearer %s\r\n",
                 a->up_host, a->cfg.upstream_port, a->token);
  else
    n = snprintf(extra, sizeof(extra), "Host: %s:%d\r\n", a->up_host,
                 a->cfg.upstream_port);
  uv_mutex_unlock(&a->mu);
  if (n < 0 || (size_t)n >= sizeof(extra)) n = 0;
  front_head_free(f);
  f->head = kp__http_build_request(head, head->target, head->target_len, drop,
                                   extra, (size_t)n, &f->head_len);
  /* The token is in that buffer: wipe the stack copy now. */
  memset(extra, 0, sizeof(extra));
  if (f->head == NULL) {
    kp__relay_abort(r, KP_ENOMEM);
    return;
  }
  f->idempotent = method_idempotent(head) != 0;
  f->retried = 0;
  u = pool_take(a);
  if (u != NULL) {
    kp__ep_t ep = {&kp__conn_ep_ops, u->conn};
    f->reused = 1;
    f->up = u;
    u->relay = r;
    u->attached = 1;
    kp__relay_attach(r, ep, f->head, f->head_len);
    return;
  }
  f->reused = 0;
  if (up_dial(f, r) != 0) kp__relay_abort(r, KP_EIO);
}

static void af_release_back(kp__relay_t *r, kp__ep_t back,
                            kp__relay_back_end_t how) {
  agent_front_t *f = kp__relay_user_data(r);
  kp__conn_t *c = back.h;
  up_conn_t *u = c->ud;
  u->relay = NULL;
  u->attached = 0;
  f->up = NULL;
  if (how == KP__RELAY_BACK_REUSABLE && pool_put(u)) return;
  kp__conn_close(c, 0);
}

/* A pooled conn that died under a request it had not answered: the server
 * closed it as the request crossed (its idle timeout, a restart). Once, on
 * a new conn, and only for a method that may be sent twice; a fresh conn
 * that dies is the server's answer and gets the 502. */
static int af_retry(kp__relay_t *r, int err) {
  agent_front_t *f = kp__relay_user_data(r);
  (void)err;
  if (!f->reused || !f->idempotent || f->retried || f->agent->freeing)
    return 0;
  f->retried = 1;
  f->reused = 0;
  return up_dial(f, r) == 0;
}

static void af_done(kp__relay_t *r) {
  agent_front_t *f = kp__relay_user_data(r);
  /* The stream is not touched here: it is closed already (that is what
   * finished the relay) or was reset by the relay's abort. A conn still
   * here is a dial (an attached one was released or closed first). */
  if (f->up) {
    f->up->relay = NULL; /* a dial still running sees no relay */
    kp__conn_close(f->up->conn, KP_ECLOSED);
  }
  front_head_free(f);
  free(f);
}

static const kp__relay_router_t agent_router = {
    .on_request = af_on_request,
    .release_back = af_release_back,
    .retry = af_retry,
    .on_done = af_done,
};

static void agent_on_stream(kp__sess_t *s, kp_mux_stream_t *st) {
  kp_agent_t *a = s->ud;
  agent_front_t *f = calloc(1, sizeof(*f));
  kp__relay_t *r;
  kp__ep_t ep = {&kp__stream_ep_ops, st};
  if (f == NULL || kp__relay_new(&r, ep, &agent_router, NULL, f) != 0) {
    free(f);
    kp_mux_stream_reset(st);
    return;
  }
  f->agent = a;
  f->st = st;
  kp_mux_stream_set_user_data(st, r);
  kp_mux_stream_accept(st);
}

static void agent_sess_closed(kp__sess_t *s, int status) {
  kp_agent_t *a = s->ud;
  a->sess = NULL;
  if (a->cbs.on_state) a->cbs.on_state(a, 0, status, a->ud);
  if (a->freeing) uv_sem_post(&a->done);
}

static const kp__sess_owner_t agent_owner = {
    .on_stream = agent_on_stream,
    .on_close = agent_sess_closed,
};

/* ---- dialing the hub: TLS, then the WebSocket upgrade ---- */

static void hub_ready(kp__conn_t *c, int status) {
  kp_agent_t *a = c->ud;
  char req[4096];
  int n;
  if (status != 0) return; /* hub_closed reports */
  if (kp_ws_client_key(a->ws_key) != 0) {
    kp__conn_close(c, KP_EIO);
    return;
  }
  n = snprintf(req, sizeof(req),
               "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
               "Sec-WebSocket-Version: 13\r\n%s"
               "User-Agent: kopilot-agent\r\n\r\n",
               a->hub_path, a->hub_host, a->cfg.hub_port, a->ws_key,
               a->cfg.framed ? "Sec-WebSocket-Protocol: " KP_WS_SUBPROTOCOL "\r\n" : "");
  if (n < 0 || (size_t)n >= sizeof(req) ||
      kp__conn_write(c, (const uint8_t *)req, (size_t)n) != 0)
    kp__conn_close(c, KP_EIO);
}

static void hub_read(kp__conn_t *c, const uint8_t *p, size_t n,
                     kp_chunk_t *chunk) {
  kp_agent_t *a = c->ud;
  kp_http_head_t head;
  const kp_http_header_t *acc, *proto;
  char want[29];
  uint8_t *nb;
  int rc, framed;
  (void)chunk;
  nb = realloc(a->hs_buf, a->hs_len + n);
  if (nb == NULL) {
    kp__conn_close(c, KP_ENOMEM);
    return;
  }
  a->hs_buf = nb;
  memcpy(a->hs_buf + a->hs_len, p, n);
  a->hs_len += n;
  rc = kp_http_parse_response(a->hs_buf, a->hs_len, 0, &head);
  if (rc == KP_EAGAIN) return;
  if (rc < 0) {
    kp__conn_close(c, KP_EPROTO);
    return;
  }
  if (head.status != 101) {
    /* 401 for a wrong token, 404 for a hub without /connect, ... */
    kp__conn_close(c, head.status == 401 || head.status == 403 ? KP_EREFUSED
                                                               : KP_EPROTO);
    return;
  }
  acc = kp_http_find_header(&head, "sec-websocket-accept");
  proto = kp_http_find_header(&head, "sec-websocket-protocol");
  kp_ws_accept_key(a->ws_key, strlen(a->ws_key), want);
  if (acc == NULL || acc->value_len != 28 || memcmp(acc->value, want, 28) != 0) {
    kp__conn_close(c, KP_EPROTO);
    return;
  }
  framed = proto != NULL &&
           kp__strieq(proto->value, proto->value_len, KP_WS_SUBPROTOCOL);
  /* An original hub does not take kopilot.v2 and answers without a
   * subprotocol: the session then runs raw, whatever was asked. */
  a->dialing = NULL;
  rc = kp__sess_start(&a->sess, c, 0, framed, a->cfg.mux_window,
                      a->cfg.keepalive_ms, &agent_owner, a,
                      a->hs_buf + rc, a->hs_len - (size_t)rc);
  free(a->hs_buf);
  a->hs_buf = NULL;
  a->hs_len = 0;
  if (rc != 0) {
    kp__conn_close(c, rc);
    return;
  }
  if (a->cbs.on_state) a->cbs.on_state(a, 1, 0, a->ud);
}

static void hub_eof(kp__conn_t *c) { kp__conn_close(c, KP_ECLOSED); }

static void hub_closed(kp__conn_t *c, int status) {
  kp_agent_t *a = c->ud;
  a->dialing = NULL;
  free(a->hs_buf);
  a->hs_buf = NULL;
  a->hs_len = 0;
  if (a->cbs.on_state) a->cbs.on_state(a, 0, status ? status : KP_ECLOSED, a->ud);
  if (a->freeing) uv_sem_post(&a->done);
}

static const kp__conn_cbs_t hub_cbs = {
    .on_ready = hub_ready,
    .on_read = hub_read,
    .on_eof = hub_eof,
    .on_written = NULL,
    .on_close = hub_closed,
};

static void connect_run(void *arg) {
  kp_agent_t *a = arg;
  int rc;
  if (a->sess || a->dialing || a->freeing || a->draining) return;
  rc = kp__conn_dial(&a->dialing, a->loop, a->hub_host, a->cfg.hub_port,
                     a->hub_tls, a->hub_host, &hub_cbs, a);
  if (rc != 0) {
    a->dialing = NULL;
    if (a->cbs.on_state) a->cbs.on_state(a, 0, rc, a->ud);
  }
}

int kp_agent_connect(kp_agent_t *a) {
  return kp_loop_post(a->loop, connect_run, a);
}

int kp_agent_set_token(kp_agent_t *a, const char *token) {
  char *t = strdup(token ? token : "");
  char *old;
  if (t == NULL) return KP_ENOMEM;
  uv_mutex_lock(&a->mu);
  old = a->token;
  a->token = t;
  uv_mutex_unlock(&a->mu);
  if (old) {
    memset(old, 0, strlen(old));
    free(old);
  }
  return 0;
}

typedef struct shutdown_req {
  kp_agent_t *agent;
  uint64_t grace_ms;
} shutdown_req_t;

/* While draining: the session closes once its last stream finished or the
 * grace period ran out, whichever comes first. */
static void drain_check(uv_timer_t *t) {
  kp_agent_t *a = t->data;
  uv_loop_t *uv = kp__loop_uv(a->loop);
  if (a->sess == NULL) {
    uv_timer_stop(t);
    return;
  }
  if (kp_mux_num_streams(a->sess->mux) == 0 || uv_now(uv) >= a->drain_deadline) {
    uv_timer_stop(t);
    kp__sess_close(a->sess, KP_ECLOSED);
  }
}

static void shutdown_run(void *arg) {
  shutdown_req_t *req = arg;
  kp_agent_t *a = req->agent;
  uv_loop_t *uv = kp__loop_uv(a->loop);
  a->draining = 1;
  /* No request will want an idle conn any more; those in flight close
   * theirs when they end (pool_put refuses while draining). */
  pool_close_all(a);
  if (a->dialing) {
    kp__conn_close(a->dialing, KP_ECLOSED); /* on_state follows */
  } else if (a->sess == NULL) {
    /* Between sessions: already down. */
    if (a->cbs.on_state) a->cbs.on_state(a, 0, KP_ECLOSED, a->ud);
  }
  if (a->sess && !a->sess->mux_closed) {
    kp_mux_goaway(a->sess->mux, KP_MUX_GOAWAY_NORMAL);
    a->drain_deadline = uv_now(uv) + req->grace_ms;
    if (!a->drain_timer_on) {
      uv_timer_init(uv, &a->drain_timer);
      a->drain_timer.data = a;
      a->drain_timer_on = 1;
    }
    uv_timer_start(&a->drain_timer, drain_check, 0, 100);
  }
  free(req);
}

int kp_agent_shutdown(kp_agent_t *a, uint64_t grace_ms) {
  shutdown_req_t *req = malloc(sizeof(*req));
  int rc;
  if (req == NULL) return KP_ENOMEM;
  req->agent = a;
  req->grace_ms = grace_ms;
  rc = kp_loop_post(a->loop, shutdown_run, req);
  if (rc != 0) free(req);
  return rc;
}

static char *dup_or_null(const char *s) { return s ? strdup(s) : NULL; }

int kp_agent_new(kp_agent_t **out, kp_loop_t *loop,
                 const kp_agent_config_t *cfg, const kp_agent_callbacks_t *cbs,
                 void *ud, char *err, size_t errlen) {
  kp_agent_t *a = calloc(1, sizeof(*a));
  kp_tls_ctx_options_t o;
  static const char *const alpn_h1[] = {"http/1.1"};
  int rc;
  *out = NULL;
  if (a == NULL) return KP_ENOMEM;
  memset(&o, 0, sizeof(o));
  o.ca_file = cfg->hub_ca_file;
  o.insecure_skip_verify = cfg->hub_insecure;
  o.alpn = alpn_h1;
  o.alpn_count = 1;
  rc = kp_tls_ctx_new(&a->hub_tls, &o, err, errlen);
  if (rc != 0) goto fail_hub;
  memset(&o, 0, sizeof(o));
  o.ca_file = cfg->upstream_ca_file;
  if (cfg->upstream_ca_pem) {
    o.ca_pem = cfg->upstream_ca_pem;
    o.ca_pem_len = strlen(cfg->upstream_ca_pem);
  }
  if (cfg->upstream_cert_pem && cfg->upstream_key_pem) {
    o.cert_pem = cfg->upstream_cert_pem;
    o.cert_pem_len = strlen(cfg->upstream_cert_pem);
    o.key_pem = cfg->upstream_key_pem;
    o.key_pem_len = strlen(cfg->upstream_key_pem);
  }
  o.insecure_skip_verify = cfg->upstream_insecure;
  o.alpn = alpn_h1;
  o.alpn_count = 1;
  rc = kp_tls_ctx_new(&a->up_tls, &o, err, errlen);
  if (rc != 0) goto fail_up;
  a->loop = loop;
  a->cfg = *cfg;
  a->hub_host = dup_or_null(cfg->hub_host);
  a->hub_path = dup_or_null(cfg->hub_path ? cfg->hub_path : "/connect");
  a->up_host = dup_or_null(cfg->upstream_host);
  a->cbs = *cbs;
  a->ud = ud;
  uv_mutex_init(&a->mu);
  uv_sem_init(&a->done, 0);
  *out = a;
  return 0;

fail_up:
  kp_tls_ctx_free(a->hub_tls);
fail_hub:
  free(a);
  return rc;
}

static void drain_timer_closed(uv_handle_t *h) {
  kp_agent_t *a = h->data;
  uv_sem_post(&a->done);
}

/* Frees in three steps, each posting `done`: the drain timer (if any) is
 * closed first, then the session or the dial, then the upstream pool. */
static void free_run(void *arg) {
  kp_agent_t *a = arg;
  a->freeing = 1;
  if (a->sess) kp__sess_close(a->sess, KP_ECLOSED);
  else if (a->dialing) kp__conn_close(a->dialing, KP_ECLOSED);
  else uv_sem_post(&a->done);
}

static void free_timer_run(void *arg) {
  kp_agent_t *a = arg;
  if (a->drain_timer_on) uv_close((uv_handle_t *)&a->drain_timer, drain_timer_closed);
  else uv_sem_post(&a->done);
}

/* Last: the idle upstream conns. Each one's on_close reaches the agent
 * (pool_closed), so the agent lives until the list is empty; `done` is
 * posted then. The session is gone by now, so no request returns a conn. */
static void free_pool_run(void *arg) {
  kp_agent_t *a = arg;
  a->pool_freeing = 1;
  if (a->idle == NULL) uv_sem_post(&a->done);
  else pool_close_all(a);
}

void kp_agent_free(kp_agent_t *a) {
  if (a == NULL) return;
  if (kp_loop_post(a->loop, free_timer_run, a) == 0) uv_sem_wait(&a->done);
  if (kp_loop_post(a->loop, free_run, a) == 0) uv_sem_wait(&a->done);
  if (kp_loop_post(a->loop, free_pool_run, a) == 0) uv_sem_wait(&a->done);
  kp_tls_ctx_free(a->hub_tls);
  kp_tls_ctx_free(a->up_tls);
  uv_mutex_destroy(&a->mu);
  uv_sem_destroy(&a->done);
  if (a->token) memset(a->token, 0, strlen(a->token));
  free(a->token);
  free(a->hub_host);
  free(a->hub_path);
  free(a->up_host);
  free(a);
}
