/* agent.c - the agent's data plane: one session to the hub; each stream the
 * hub opens is an HTTP/1.1 connection whose requests go to the member's API
 * server with the agent's own credentials. */
#include "backpool.h"
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
  char *hub_token; /* for the /connect upgrade; NULL: none */
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
  /* The upstream keep-alive pool (loop thread only); kp_agent_free waits
   * for its idle list to run empty. See "upstream connections" below. */
  kp__backpool_t pool;
};

/* ---- upstream connections and their keep-alive pool ---- */

/* Every request goes to the one API server, so all upstream conns share
 * one pool key (""); see backpool.h for the pool and the retry. */
#define UP_MAX_IDLE_DEFAULT 256
#define UP_IDLE_MS_DEFAULT 60000
#define AGENT_RELAY_HIGH_WATER (1u << 20) /* see agent_on_stream */

typedef struct agent_front {
  kp_agent_t *agent;
  kp_mux_stream_t *st;
  kp__backreq_t up; /* the current request and its conn */
} agent_front_t;

static int up_dial(kp__backpool_t *p, kp__backreq_t *q, kp__back_t *b) {
  kp_agent_t *a = p->ud;
  (void)q;
  return kp__conn_dial(&b->conn, a->loop, a->up_host, a->cfg.upstream_port,
                       a->up_tls, a->up_host, &kp__back_conn_cbs, b);
}

/* The API server could not be reached: the caller gets a 502 Status (the
 * conn, if any, closes on its own). */
static void up_fail(kp__backreq_t *q, int status) {
  char msg[256];
  size_t n;
  uint8_t *resp;
  snprintf(msg, sizeof(msg), "kopilot-agent: cannot reach the API server: %s",
           kp_strerror(status));
  resp = kp__http_build_status(502, "ServiceUnavailable", msg, 1, &n);
  if (resp) kp__relay_respond(q->relay, resp, n, 1);
  else kp__relay_abort(q->relay, KP_ENOMEM);
  free(resp);
}

/* kp_agent_free's last step waits for this (free_pool_run). */
static void up_drained(kp__backpool_t *p) {
  kp_agent_t *a = p->ud;
  uv_sem_post(&a->done);
}

static const kp__backpool_hooks_t up_hooks = {
    .dial = up_dial,
    .fail = up_fail,
    .drained = up_drained,
};

/* ---- streams from the hub ---- */

static void af_on_request(kp__relay_t *r, const kp_http_head_t *head,
                          const uint8_t *raw, size_t raw_len) {
  agent_front_t *f = kp__relay_user_data(r);
  kp_agent_t *a = f->agent;
  static const char *const drop[] = {"authorization", "host", NULL};
  char extra[8192];
  int n;
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
  kp__backreq_clear_head(&f->up);
  f->up.head = kp_http_build_request(head, head->target, head->target_len,
                                      drop, extra, (size_t)n, &f->up.head_len);
  /* The token is in that buffer: wipe the stack copy now. */
  memset(extra, 0, sizeof(extra));
  if (f->up.head == NULL) {
    kp__relay_abort(r, KP_ENOMEM);
    return;
  }
  f->up.idempotent = kp__backpool_idempotent(head) != 0;
  if (kp__backreq_start(&a->pool, &f->up, r) != 0) kp__relay_abort(r, KP_EIO);
}

static void af_release_back(kp__relay_t *r, kp__ep_t back,
                            kp__relay_back_end_t how) {
  agent_front_t *f = kp__relay_user_data(r);
  kp__backreq_release(&f->up, back, how);
}

static int af_retry(kp__relay_t *r, int err) {
  agent_front_t *f = kp__relay_user_data(r);
  (void)err;
  if (f->agent->freeing) return 0;
  return kp__backreq_retry(&f->agent->pool, &f->up);
}

static void af_done(kp__relay_t *r) {
  agent_front_t *f = kp__relay_user_data(r);
  /* The stream is not touched here: it is closed already (that is what
   * finished the relay) or was reset by the relay's abort. A conn still
   * here is a dial (an attached one was released or closed first). */
  kp__backreq_orphan(&f->up);
  kp__backreq_clear_head(&f->up);
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
  /* The agent's conns lead to its own API server, which reads fast: a
   * deeper queue keeps an upload streaming (the hub keeps the default,
   * which is what a slow caller can pin). */
  kp__relay_config_t rc = {0, AGENT_RELAY_HIGH_WATER};
  if (f == NULL || kp__relay_new(&r, ep, &agent_router, &rc, f) != 0) {
    free(f);
    kp_mux_stream_reset(st);
    return;
  }
  f->agent = a;
  f->st = st;
  f->up.key = ""; /* every upstream conn is to the one API server */
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
  int n, rc;
  if (status != 0) return; /* hub_closed reports */
  if (kp_ws_client_key(a->ws_key) != 0) {
    kp__conn_close(c, KP_EIO);
    return;
  }
  /* The token goes in a header, not in the URL: a request target is what
   * L7 proxies and access logs on the way record. */
  n = snprintf(req, sizeof(req),
               "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
               "Sec-WebSocket-Version: 13\r\n%s%s%s%s"
               "User-Agent: kopilot-agent\r\n\r\n",
               a->hub_path, a->hub_host, a->cfg.hub_port, a->ws_key,
               a->cfg.framed ? "Sec-WebSocket-Protocol: " KP_WS_SUBPROTOCOL "\r\n" : "",
               a->hub_token ? "Authorization: Bearer " : "",
               a->hub_token ? a->hub_token : "", a->hub_token ? "\r\n" : "");
  rc = n < 0 || (size_t)n >= sizeof(req) ||
       kp__conn_write(c, (const uint8_t *)req, (size_t)n) != 0;
  /* kp__conn_write copied it; the token must not linger on the stack. */
  memset(req, 0, sizeof(req));
  if (rc) kp__conn_close(c, KP_EIO);
}

static void hub_read(kp__conn_t *c, const uint8_t *p, size_t n,
                     kp_chunk_t *chunk) {
  kp_agent_t *a = c->ud;
  kp_http_head_t head;
  const kp_http_header_t *proto;
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
  proto = kp_http_find_header(&head, "sec-websocket-protocol");
  if (kp_ws_check_response(head.headers, head.num_headers, a->ws_key) != 0) {
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
   * theirs when they end (the closed pool refuses them). */
  kp__backpool_close(&a->pool);
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

/* A hub token goes into a header line: visible ASCII only (RFC 6750 2.1's
 * b64token is a subset), so it can never end the line early. */
static int hub_token_ok(const char *t) {
  if (t == NULL) return 1;
  for (; *t; t++)
    if ((unsigned char)*t < 0x21 || (unsigned char)*t > 0x7e) return 0;
  return 1;
}

int kp_agent_new(kp_agent_t **out, kp_loop_t *loop,
                 const kp_agent_config_t *cfg, const kp_agent_callbacks_t *cbs,
                 void *ud, char *err, size_t errlen) {
  kp_agent_t *a;
  kp_tls_ctx_options_t o;
  static const char *const alpn_h1[] = {"http/1.1"};
  int rc;
  *out = NULL;
  if (!hub_token_ok(cfg->hub_token)) {
    if (errlen) snprintf(err, errlen, "the hub token holds a space or a control character");
    return KP_EINVAL;
  }
  a = calloc(1, sizeof(*a));
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
  a->hub_token = cfg->hub_token && cfg->hub_token[0] ? dup_or_null(cfg->hub_token) : NULL;
  a->cfg.hub_token = NULL; /* borrowed for this call only */
  a->up_host = dup_or_null(cfg->upstream_host);
  a->cbs = *cbs;
  a->ud = ud;
  kp__backpool_init(&a->pool, &up_hooks, a,
                    cfg->upstream_max_idle ? cfg->upstream_max_idle
                                           : UP_MAX_IDLE_DEFAULT,
                    cfg->upstream_idle_ms ? cfg->upstream_idle_ms
                                          : UP_IDLE_MS_DEFAULT);
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
  kp__backpool_close(&a->pool); /* requests ending now return no conn */
  if (a->sess) kp__sess_close(a->sess, KP_ECLOSED);
  else if (a->dialing) kp__conn_close(a->dialing, KP_ECLOSED);
  else uv_sem_post(&a->done);
}

static void free_timer_run(void *arg) {
  kp_agent_t *a = arg;
  if (a->drain_timer_on) uv_close((uv_handle_t *)&a->drain_timer, drain_timer_closed);
  else uv_sem_post(&a->done);
}

/* Last: the idle upstream conns. Each one's on_close reaches the pool in
 * the agent, so the agent lives until the list is empty; `done` is posted
 * then (up_drained). The session is gone by now, so no request returns a
 * conn. */
static void free_pool_run(void *arg) {
  kp_agent_t *a = arg;
  if (kp__backpool_wait_empty(&a->pool)) uv_sem_post(&a->done);
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
  if (a->hub_token) memset(a->hub_token, 0, strlen(a->hub_token));
  free(a->hub_token);
  free(a->hub_host);
  free(a->hub_path);
  free(a->up_host);
  free(a);
}
