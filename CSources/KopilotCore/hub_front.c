/* hub_front.c - a caller's connection at the hub: the relay that parses
 * its requests, the owner's answers (from the loop or from any thread),
 * proxying into a session stream and upgrading to an agent session. See
 * hub.c. */
#include "hub_internal.h"

/* The key a request is reported on: a cluster ID, whole, or "" when what
 * the owner passed could be none (longer than any ID). */
void kp__hub_set_cluster(hub_req_t *q, const char *cluster) {
  size_t n = strlen(cluster);
  if (n > HUB_CLUSTER_ID_MAX) n = 0;
  memcpy(q->cluster, cluster, n);
  q->cluster[n] = 0;
}

/* The connection lets its request go: freed, or left for the owed answer
 * to free. */
static void req_release(hub_front_t *f) {
  hub_req_t *q = f->req;
  f->req = NULL;
  if (q == NULL) return;
  if (q->owed) q->f = NULL;
  else free(q);
}

void kp__hub_front_free(hub_front_t *f) {
  req_release(f);
  if (f->fwd) kp__backreq_clear_head(&f->fwd->req);
  free(f->fwd);
  free(f->moved_cluster);
  free(f->moved_target);
  free(f->moved_fields);
  free(f);
}

/* A stream carries one request: done or reusable, it is closed (FIN); a
 * failed exchange resets it. */
static void front_release_back(kp__relay_t *r, kp__ep_t back,
                               kp__relay_back_end_t how) {
  hub_front_t *f = kp__relay_user_data(r);
  kp_mux_stream_t *st = back.h;
  if (back.ops == &kp__conn_ep_ops) {
    kp__backreq_release(&f->fwd->req, back, how); /* a peer replica's conn */
    return;
  }
  kp_mux_stream_set_user_data(st, NULL);
  if (how != KP__RELAY_BACK_FAILED) kp_mux_stream_close(st);
  else kp_mux_stream_reset(st);
}

static void front_done(kp__relay_t *r) {
  hub_front_t *f = kp__relay_user_data(r);
  f->relay = NULL;
  if (f->fwd) kp__backreq_orphan(&f->fwd->req); /* one still dialing goes */
  if (f->detached) {
    /* The conn went to an agent session; this record is ours to free. The
     * relay may finish inside take_front or only when its pump unwinds. */
    if (f->arriving) f->freed_late = 1;
    else kp__hub_front_free(f);
    return;
  }
  if (f->conn) kp__conn_close(f->conn, 0);
}

static void front_on_request(kp__relay_t *r, const kp_http_head_t *head,
                             const uint8_t *raw, size_t raw_len) {
  hub_front_t *f = kp__relay_user_data(r);
  hub_req_t *q;
  (void)raw;
  (void)raw_len;
  req_release(f); /* the previous one is over (and answered) */
  f->forwarding = 0;
  if ((q = calloc(1, sizeof(*q))) == NULL) {
    if (f->moved_kind == MOVE_PROXY) /* the owner counted it, there */
      kp__hub_report_unrun(f->hub, f->moved_cluster, f->moved_id,
                           f->moved_started_ns);
    kp__relay_abort(r, KP_ENOMEM);
    return;
  }
  q->hub = f->hub;
  q->f = f;
  q->via_peer = f->via_peer != 0;
  q->started_ns = f->moved_kind ? f->moved_started_ns : uv_hrtime();
  q->id = f->moved_kind
              ? f->moved_id
              : atomic_fetch_add_explicit(&f->hub->group->requests, 1,
                                          memory_order_relaxed) + 1;
  f->req = q;
  /* The head is in: no deadline while the request and its response run
   * (a watch or an exec may last hours). */
  kp__conn_set_timeout(f->conn, 0);
  f->pinned = 0;
  if (f->moved_kind) {
    /* Moved here from another loop with its answer (see "moving a
     * caller"): the owner was asked there, and is not asked again. */
    int kind = f->moved_kind;
    char *cluster = f->moved_cluster, *target = f->moved_target;
    char *fields = f->moved_fields;
    f->moved_kind = 0;
    f->moved_cluster = f->moved_target = f->moved_fields = NULL;
    f->pinned = 1;
    if (kind == MOVE_PROXY) kp__hub_do_proxy(f, cluster, target, fields);
    else kp__hub_do_accept_agent(f, cluster);
    free(cluster);
    free(target);
    free(fields);
    return;
  }
  q->owed = 1;
  f->hub->cbs.on_request(f->hub, (kp_hub_request_t *)q, head, f->conn->peer,
                         f->hub->ud);
}

/* A caller has this long, from the moment the connection is ready or the
 * previous response ended, to send a complete request head: it bounds both
 * idle keep-alive connections and callers that trickle a head in. */
#define HUB_HEAD_DEADLINE_MS 30000

#define HEAD_DEADLINE(hub) \
  ((hub)->cfg.head_timeout_ms ? (hub)->cfg.head_timeout_ms : HUB_HEAD_DEADLINE_MS)

static void front_idle(kp__relay_t *r) {
  hub_front_t *f = kp__relay_user_data(r);
  if (f->conn) kp__conn_set_timeout(f->conn, HEAD_DEADLINE(f->hub));
}

static void front_exchange(kp__relay_t *r, int status, uint64_t up,
                           uint64_t down) {
  hub_front_t *f = kp__relay_user_data(r);
  kp_hub_t *hub = f->hub;
  hub_req_t *q = f->req;
  if (q != NULL && hub->cbs.on_proxied)
    hub->cbs.on_proxied(hub, q->id, q->cluster, q->session, status, up, down,
                        (uv_hrtime() - q->started_ns) / 1000, hub->ud);
}

static void front_response(kp__relay_t *r, int status) {
  hub_front_t *f = kp__relay_user_data(r);
  kp_hub_t *hub = f->hub;
  if (f->req != NULL && hub->cbs.on_response)
    hub->cbs.on_response(hub, f->req->id, status, hub->ud);
}

const kp__relay_router_t kp__hub_front_router = {
    .on_request = front_on_request,
    .on_exchange = front_exchange,
    .on_response = front_response,
    .release_back = front_release_back,
    .retry = kp__hub_front_retry,
    .describe_failure = kp__hub_front_describe_failure,
    .on_idle = front_idle,
    .on_done = front_done,
};

static void front_ready(kp__conn_t *c, int status) {
  hub_front_t *f = c->ud;
  kp__ep_t ep = {&kp__conn_ep_ops, c};
  kp__relay_config_t rc = {f->hub->cfg.max_head, 0};
  kp__hub_handshake_over(f);
  if (status != 0) return; /* on_close follows */
  if (kp__relay_new(&f->relay, ep, &kp__hub_front_router, &rc, f) != 0) {
    kp__conn_close(c, KP_ENOMEM);
    return;
  }
  kp__conn_set_timeout(c, HEAD_DEADLINE(f->hub));
}

static void front_read(kp__conn_t *c, const uint8_t *p, size_t n,
                       kp_chunk_t *chunk) {
  hub_front_t *f = c->ud;
  if (f->relay) kp__relay_front_data(f->relay, p, n, chunk);
}

static void front_eof(kp__conn_t *c) {
  hub_front_t *f = c->ud;
  if (f->relay) kp__relay_front_eof(f->relay);
  else kp__conn_close(c, 0);
}

static void front_written(kp__conn_t *c, size_t n) {
  hub_front_t *f = c->ud;
  (void)n;
  if (f->relay && !f->move_to) kp__relay_writable(f->relay);
}

static void front_drained(kp__conn_t *c) {
  hub_front_t *f = c->ud;
  if (f->move_to) kp__hub_move_when_drained(f);
}

static void front_closed(kp__conn_t *c, int status) {
  hub_front_t *f = c->ud;
  kp_hub_t *hub = f->hub;
  f->conn = NULL;
  kp__hub_handshake_over(f);
  if (f->moved_kind == MOVE_PROXY) /* moved or about to, never run */
    kp__hub_report_unrun(hub, f->moved_cluster, f->moved_id,
                         f->moved_started_ns);
  f->moved_kind = 0;
  f->move_to = NULL;
  if (f->relay) kp__relay_front_closed(f->relay, status);
  kp__hub_front_free(f); /* an owed request stays for its answer */
  hub->open_conns--;
  kp__hub_maybe_done(hub);
}

const kp__conn_cbs_t kp__hub_front_cbs = {
    .on_ready = front_ready,
    .on_read = front_read,
    .on_eof = front_eof,
    .on_written = front_written,
    .on_drained = front_drained,
    .on_close = front_closed,
};

/* ---- answers ---- */

/* Sends resp (n bytes, a whole response; freed here) with `extra` (whole
 * header lines, or "") after its status line. */
static void respond_with(hub_front_t *f, uint8_t *resp, size_t n,
                         const char *extra, int close) {
  size_t head, x = strlen(extra);
  uint8_t *eol = resp ? memchr(resp, '\n', n) : NULL, *out;
  if (eol != NULL && x == 0) {
    kp__relay_respond(f->relay, resp, n, close);
    free(resp);
    return;
  }
  if (eol == NULL || (out = malloc(n + x)) == NULL) {
    free(resp);
    kp__relay_abort(f->relay, KP_ENOMEM);
    return;
  }
  head = (size_t)(eol + 1 - resp);
  memcpy(out, resp, head);
  memcpy(out + head, extra, x);
  memcpy(out + head + x, resp + head, n - head);
  kp__relay_respond(f->relay, out, n + x, close);
  free(out);
  free(resp);
}

static void respond_json(hub_front_t *f, int status, const char *reason,
                         const char *ctype, const char *body, size_t len,
                         int close, const char *extra) {
  size_t n = 0;
  uint8_t *resp = kp__http_build_response(status, reason, ctype, body, len,
                                          close, &n);
  respond_with(f, resp, n, extra ? extra : "", close);
}

/* A Status answer, with `extra` (whole header lines, or "") after the
 * status line. */
static void status_json_with(hub_front_t *f, int status, const char *reason,
                             const char *msg, const char *extra) {
  size_t n = 0;
  respond_with(f, kp__http_build_status(status, reason, msg, 0, &n), n, extra, 0);
}

void kp__hub_status_json(hub_front_t *f, int status, const char *reason,
                         const char *msg) {
  status_json_with(f, status, reason, msg, "");
}

/* Answers posted from another thread carry their arguments here. */
typedef struct answer {
  hub_req_t *q;
  int kind; /* 0 proxy, 1 respond, 2 agent, 3 forward (target = hop,
              * status = port) */
  int status;
  char *cluster, *target, *ctype, *body, *host, *fields;
  size_t body_len;
} answer_t;

static void answer_free(answer_t *a) {
  free(a->cluster);
  free(a->target);
  free(a->ctype);
  free(a->body);
  free(a->host);
  free(a->fields);
  free(a);
}

/* Every proxy and forward answer ends in exactly one on_proxied (the owner
 * counted it in flight under `key`). This one reports those that carried
 * no exchange: answered here (a 503, a 508) or never run (the caller left,
 * memory ran out: status 0, no response). */
void kp__hub_report_unrun(kp_hub_t *hub, const char *key, uint64_t id,
                          uint64_t started_ns) {
  if (hub->cbs.on_proxied)
    hub->cbs.on_proxied(hub, id, key, 0, 0, 0, 0,
                        (uv_hrtime() - started_ns) / 1000, hub->ud);
}

void kp__hub_proxied_local(hub_req_t *q, const char *key, int status) {
  kp_hub_t *hub = q->hub;
  if (hub->cbs.on_proxied)
    hub->cbs.on_proxied(hub, q->id, key, 0, status, 0, 0,
                        (uv_hrtime() - q->started_ns) / 1000, hub->ud);
}

/* The owner's answer, on the loop. A request whose caller left (or whose
 * relay ended meanwhile) is reported as never run and, when its caller is
 * gone, freed here. */
static void answer_apply(hub_req_t *q, int kind, int status,
                         const char *cluster, const char *target,
                         const char *ctype, const char *body, size_t len,
                         const char *host, const char *fields) {
  hub_front_t *f = q->f;
  q->owed = 0;
  if (f == NULL || f->relay == NULL) {
    if (kind == 0 || kind == 3) kp__hub_proxied_local(q, cluster ? cluster : "", 0);
    if (f == NULL) free(q);
    return;
  }
  if (kind == 0) kp__hub_do_proxy(f, cluster, target, fields);
  else if (kind == 2) kp__hub_do_accept_agent(f, cluster);
  else if (kind == 3) kp__hub_do_forward(f, cluster, host, status, target, fields);
  else respond_json(f, status, kp__http_reason(status),
                    ctype ? ctype : "application/json", body, len, 0, fields);
}

static void answer_run(void *arg) {
  answer_t *a = arg;
  answer_apply(a->q, a->kind, a->status, a->cluster, a->target, a->ctype,
               a->body, a->body_len, a->host, a->fields);
  answer_free(a);
}

/* On the loop: the answer that was lost (see hub_front_t.lost). The owner
 * counted a proxy or a forward in flight: it is reported as never run, and
 * the caller's connection is closed rather than left waiting. */
static void answer_lost_run(void *arg) {
  hub_req_t *q = arg;
  hub_front_t *f = q->f;
  q->owed = 0;
  if (q->lost_kind == 0 || q->lost_kind == 3) kp__hub_proxied_local(q, q->cluster, 0);
  if (f == NULL) free(q);
  else if (f->relay) kp__relay_abort(f->relay, KP_ENOMEM);
}

/* From another thread: copies the answer for the loop and posts it.
 * Returns 0; KP_ENOMEM when it could not be copied (the request fails on
 * the loop instead, see answer_lost_run); KP_ECLOSED when the hub stops. */
static int post_answer(hub_req_t *q, int kind, int status,
                       const char *cluster, const char *target,
                       const char *ctype, const char *body, size_t len,
                       const char *host, const char *fields) {
  answer_t *a = calloc(1, sizeof(*a));
  int rc;
  if (a != NULL) {
    a->q = q;
    a->kind = kind;
    a->status = status;
    if ((cluster && (a->cluster = strdup(cluster)) == NULL) ||
        (target && (a->target = strdup(target)) == NULL) ||
        (ctype && (a->ctype = strdup(ctype)) == NULL) ||
        (host && (a->host = strdup(host)) == NULL) ||
        (fields && (a->fields = strdup(fields)) == NULL) ||
        (len && (a->body = malloc(len)) == NULL)) {
      answer_free(a);
      a = NULL;
    } else {
      if (len) memcpy(a->body, body, len);
      a->body_len = len;
    }
  }
  if (a == NULL) {
    q->lost_kind = kind;
    if (kind == 0 || kind == 3) kp__hub_set_cluster(q, cluster);
    q->lost.fn = answer_lost_run;
    q->lost.arg = q;
    rc = kp__loop_post_node(q->hub->loop, &q->lost);
    return rc != 0 ? rc : KP_ENOMEM;
  }
  rc = kp_loop_post(q->hub->loop, answer_run, a);
  if (rc != 0) answer_free(a);
  return rc;
}

void kp__hub_head_too_big(hub_front_t *f, const char *key) {
  hub_req_t *q = f->req;
  char msg[160];
  snprintf(msg, sizeof(msg),
           "the request head, with the fields the hub adds, is over %d fields "
           "or %d bytes: the next hop could not read it",
           KP_HTTP_MAX_HEADERS, KP_HTTP_DEFAULT_MAX_HEAD);
  kp__hub_status_json(f, 431, "RequestHeaderFieldsTooLarge", msg);
  kp__hub_proxied_local(q, key, 431);
}

void kp__hub_do_proxy(hub_front_t *f, const char *cluster, const char *target,
                      const char *fields) {
  kp_hub_t *hub = f->hub;
  hub_cluster_t *c = kp__hub_cluster_find(hub, cluster, 0);
  kp__sess_t *s, *tried = NULL;
  const kp_http_head_t *head;
  char *extra, msg[384];
  /* A caller's credentials and any identity it claims never reach a
   * member: the only identity a member may see is one the hub set
   * (`fields`), and the only audit ID the hub's own. */
  static const char *const drop[] = {"authorization", "x-forwarded-for",
                                     "x-forwarded-proto",
                                     "kopilot-forwarded-by", "audit-id",
                                     KP_HTTP_DROP_IDENTITY, NULL};
  /* From a peer replica, X-Forwarded-For names the caller already (the
   * peer is authenticated; its own address says nothing). */
  static const char *const drop_peer[] = {"authorization",
                                          "kopilot-forwarded-by", "audit-id",
                                          KP_HTTP_DROP_IDENTITY, NULL};
  uint8_t *req;
  size_t req_len, attempts = 0, fields_len = fields ? strlen(fields) : 0;
  int n, keep_xff, rc;
  f->forwarding = 0;
  if (!f->pinned && (c == NULL || kp__hub_pick_session(c, NULL) == NULL)) {
    kp_hub_t *to = kp__hub_other_loop(hub, cluster, 0);
    if (to != NULL &&
        kp__hub_move_front(f, to, MOVE_PROXY, cluster, target, fields) == 0)
      return;
  }
  if ((head = kp__relay_current_head(f->relay)) == NULL) {
    kp__hub_proxied_local(f->req, cluster, 0);
    kp__relay_abort(f->relay, KP_EINVAL);
    return;
  }
  keep_xff = f->via_peer && kp_http_find_header(head, "x-forwarded-for") != NULL;
  /* The forwarding fields (at most ~110 bytes: the peer is an address),
   * then the hub's own. */
  if ((extra = malloc(128 + fields_len)) == NULL) {
    kp__hub_proxied_local(f->req, cluster, 0);
    kp__relay_abort(f->relay, KP_ENOMEM);
    return;
  }
  if (keep_xff)
    n = 0;
  else
    n = snprintf(extra, 128,
                 "X-Forwarded-For: %.*s\r\nX-Forwarded-Proto: https\r\n",
                 (int)(strrchr(f->conn->peer, ':') - f->conn->peer), f->conn->peer);
  if (n < 0 || n >= 128) n = 0;
  if (fields_len) memcpy(extra + n, fields, fields_len);
  req = kp_http_build_request(head, target, strlen(target),
                               keep_xff ? drop_peer : drop, extra,
                               (size_t)n + fields_len, &req_len);
  free(extra);
  if (req == NULL) {
    kp__hub_proxied_local(f->req, cluster, 0);
    kp__relay_abort(f->relay, KP_ENOMEM);
    return;
  }
  if (!kp__http_head_fits(req, req_len)) {
    free(req);
    kp__hub_head_too_big(f, cluster);
    return;
  }
  /* A stream that cannot be opened moves on to the next session before any
   * byte was sent: each session is tried at most once, and one that will
   * never take a stream again (GoAway, closed) is marked so and not picked
   * again by anyone. */
  while (c != NULL && attempts++ < c->count &&
         (s = kp__hub_pick_session(c, tried)) != NULL) {
    kp_mux_stream_t *st;
    kp__ep_t ep;
    /* The stream's window tuning measures from now, not from the
     * session's last read (maybe a keepalive ago). */
    kp_mux_set_now(s->mux, uv_now(kp__loop_uv(hub->loop)));
    if ((rc = kp_mux_open(s->mux, &st)) != 0) {
      if (rc == KP_EGOAWAY || rc == KP_ECLOSED) s->refusing = 1;
      tried = s;
      continue;
    }
    kp_mux_stream_set_user_data(st, f->relay);
    kp__hub_set_cluster(f->req, cluster);
    f->req->session = s->id;
    ep.ops = &kp__stream_ep_ops;
    ep.h = st;
    kp__relay_attach_owned(f->relay, ep, req, req_len);
    return;
  }
  free(req);
  /* None here takes it: another loop's session may (not when the request
   * came from another loop already: it does not go round). */
  if (!f->pinned) {
    kp_hub_t *to = kp__hub_other_loop(hub, cluster, 0);
    if (to != NULL &&
        kp__hub_move_front(f, to, MOVE_PROXY, cluster, target, fields) == 0)
      return;
  }
  snprintf(msg, sizeof(msg), "no agent of cluster %s is connected", cluster);
  kp__hub_status_json(f, 503, "ServiceUnavailable", msg);
  kp__hub_proxied_local(f->req, cluster, 503);
}

/* RFC 6455 4.2.1: a GET that asks for an upgrade, with the WebSocket
 * headers ws.c checks (kp_ws_check_request). */
static int ws_request_check(const kp_http_head_t *h, const char **key,
                            size_t *key_len) {
  if (!(h->flags & KP_HTTP_F_UPGRADE) || h->method_len != 3 ||
      memcmp(h->method, "GET", 3) != 0)
    return KP_EBADMSG;
  return kp_ws_check_request(h->headers, h->num_headers, key, key_len);
}

void kp__hub_do_accept_agent(hub_front_t *f, const char *cluster) {
  kp_hub_t *hub = f->hub;
  const kp_http_head_t *head;
  const char *key;
  size_t key_len;
  char accept[29], resp[512];
  int framed, n;
  uint8_t *rest = NULL;
  size_t rest_len = 0;
  kp__conn_t *conn = f->conn;
  kp__sess_t *s;
  hub_cluster_t *c;
  int rc;
  if (!f->pinned) {
    kp_hub_t *to = kp__hub_other_loop(hub, cluster, 1);
    if (to != NULL && kp__hub_move_front(f, to, MOVE_AGENT, cluster, NULL, NULL) == 0)
      return;
  }
  head = kp__relay_current_head(f->relay);
  rc = head ? ws_request_check(head, &key, &key_len) : KP_EINVAL;
  if (rc == KP_EUNSUPPORTED) {
    /* RFC 6455 4.2.2 / 4.4: 426 naming the version we speak. */
    status_json_with(f, 426, "UpgradeRequired",
                     "only WebSocket version 13 is spoken here",
                     "Sec-WebSocket-Version: 13\r\n");
    return;
  }
  if (rc != 0 || kp_ws_accept_key(key, key_len, accept) != 0) {
    kp__hub_status_json(f, 400, "BadRequest", "expected a WebSocket upgrade (RFC 6455)");
    return;
  }
  framed = kp__headers_list(head->headers, head->num_headers,
                            "sec-websocket-protocol", KP_WS_SUBPROTOCOL,
                            strlen(KP_WS_SUBPROTOCOL));
  n = snprintf(resp, sizeof(resp),
               "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n%s\r\n",
               accept,
               framed ? "Sec-WebSocket-Protocol: " KP_WS_SUBPROTOCOL "\r\n" : "");
  c = kp__hub_cluster_find(hub, cluster, 1);
  if (c == NULL) {
    kp__relay_abort(f->relay, KP_ENOMEM);
    return;
  }
  f->detached = 1; /* before take_front: its on_done must not close conn */
  /* After this, f belongs to the relay's on_done (front_done frees it). */
  rc = kp__relay_take_front(f->relay, &rest, &rest_len);
  f = NULL;
  if (rc != 0) {
    kp__conn_close(conn, rc);
    return;
  }
  if (kp__conn_write(conn, (const uint8_t *)resp, (size_t)n) != 0) {
    free(rest);
    kp__conn_close(conn, KP_EIO);
    return;
  }
  /* The conn now belongs to the session; the front record goes away but
   * the hub still counts the conn (the session's close uncounts it). */
  rc = kp__sess_start(&s, conn, 1, framed, hub->cfg.mux_window,
                      hub->cfg.keepalive_ms, &kp__hub_sess_owner, hub, rest,
                      rest_len);
  free(rest);
  if (rc != 0) {
    kp__conn_close(conn, rc);
    return;
  }
  if ((s->cluster = strdup(cluster)) == NULL) {
    kp__sess_close(s, KP_ENOMEM);
    return;
  }
  kp__conn_read(conn, 1); /* off when the conn came from another loop */
  s->next = c->sessions;
  if (c->sessions) c->sessions->prev = s;
  c->sessions = s;
  c->count++;
  kp__hub_place_count(hub, cluster, 1);
  if (hub->cbs.on_session) hub->cbs.on_session(hub, s->cluster, s->id, 1, 0, hub->ud);
}

/* On the loop, the answers run at once; from any other thread they are
 * copied and posted (post_answer). */
#define ON_LOOP(q) kp_loop_is_current((q)->hub->loop)

int kp_hub_request_proxy_as(kp_hub_request_t *req, const char *cluster,
                            const char *target, const char *fields) {
  hub_req_t *q = (hub_req_t *)req;
  if (fields != NULL && *fields == 0) fields = NULL;
  if (fields != NULL && kp_http_check_hub_fields(fields, strlen(fields)) != 0)
    return KP_EINVAL;
  if (!ON_LOOP(q))
    return post_answer(q, 0, 0, cluster, target, NULL, NULL, 0, NULL, fields);
  answer_apply(q, 0, 0, cluster, target, NULL, NULL, 0, NULL, fields);
  return 0;
}

int kp_hub_request_proxy(kp_hub_request_t *req, const char *cluster,
                         const char *target) {
  return kp_hub_request_proxy_as(req, cluster, target, NULL);
}

int kp_hub_request_respond_as(kp_hub_request_t *req, int status,
                              const char *content_type, const char *body,
                              size_t body_len, const char *fields) {
  hub_req_t *q = (hub_req_t *)req;
  if (fields != NULL && *fields == 0) fields = NULL;
  if (fields != NULL && kp_http_check_hub_fields(fields, strlen(fields)) != 0)
    return KP_EINVAL;
  if (!ON_LOOP(q))
    return post_answer(q, 1, status, NULL, NULL, content_type, body, body_len,
                       NULL, fields);
  answer_apply(q, 1, status, NULL, NULL, content_type, body, body_len, NULL,
               fields);
  return 0;
}

int kp_hub_request_respond(kp_hub_request_t *req, int status,
                           const char *content_type, const char *body,
                           size_t body_len) {
  return kp_hub_request_respond_as(req, status, content_type, body, body_len,
                                   NULL);
}

int kp_hub_request_accept_agent(kp_hub_request_t *req, const char *cluster) {
  hub_req_t *q = (hub_req_t *)req;
  if (!ON_LOOP(q)) return post_answer(q, 2, 0, cluster, NULL, NULL, NULL, 0, NULL, NULL);
  answer_apply(q, 2, 0, cluster, NULL, NULL, NULL, 0, NULL, NULL);
  return 0;
}

int kp_hub_request_forward_as(kp_hub_request_t *req, const char *cluster,
                              const char *host, int port, const char *hop,
                              const char *fields) {
  hub_req_t *q = (hub_req_t *)req;
  cluster = cluster ? cluster : "";
  host = host ? host : "";
  hop = hop ? hop : "";
  if (fields != NULL && *fields == 0) fields = NULL;
  if (fields != NULL && (strlen(fields) > 1024 ||
                         kp_http_check_hub_fields(fields, strlen(fields)) != 0))
    return KP_EINVAL;
  if (!ON_LOOP(q)) return post_answer(q, 3, port, cluster, hop, NULL, NULL, 0, host, fields);
  answer_apply(q, 3, port, cluster, hop, NULL, NULL, 0, host, fields);
  return 0;
}

int kp_hub_request_forward(kp_hub_request_t *req, const char *cluster,
                           const char *host, int port, const char *hop) {
  return kp_hub_request_forward_as(req, cluster, host, port, hop, NULL);
}

int kp_hub_request_via_peer(const kp_hub_request_t *req) {
  return ((const hub_req_t *)req)->via_peer;
}

uint64_t kp_hub_request_id(const kp_hub_request_t *req) {
  return ((const hub_req_t *)req)->id;
}
