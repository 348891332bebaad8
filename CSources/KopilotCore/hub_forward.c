/* hub_forward.c - forwarding a caller's request to a peer replica over
 * mutual TLS, with a small pool of peer connections. See hub.c. */
#include "hub_internal.h"

/* The caller's connection stays the relay's front; the back is a TLS conn
 * to the peer's listener, dialed with the peer certificate (mutual TLS),
 * so the relay treats it as agent.c treats an upstream conn: body and
 * response streaming with backpressure, upgrades, keep-alive. A conn that
 * ended at a request boundary waits a few seconds in a small pool for the
 * next forward to the same host:port (the peer keeps an idle conn for its
 * head deadline, 30 s by default, so ours goes first); a pooled conn that
 * died as a request crossed it is retried once on a new conn when the
 * request may be sent twice (no body, an idempotent method). */

/* Keeps the first reason a peer conn failed for the 502's message. */
static void fwd_note_why(hub_front_t *f, kp__conn_t *c, int status) {
  const char *tls = c && c->tls ? kp_tls_last_error(c->tls) : "";
  char *why = f->fwd->why;
  size_t cap = sizeof(f->fwd->why);
  if (why[0]) return;
  if (status == 0)
    snprintf(why, cap, "the connection closed before the response began");
  else if ((status == KP_ECERT || status == KP_ETLS) && tls && tls[0])
    snprintf(why, cap, "%s: %s", kp_strerror(status), tls);
  else
    snprintf(why, cap, "%s", kp_strerror(status));
}

/* No response head will come from the peer: 502 naming it. */
static void fwd_fail(hub_front_t *f, int status) {
  char msg[600];
  fwd_note_why(f, NULL, status);
  snprintf(msg, sizeof(msg), "replica %s unreachable: %s", f->fwd->to,
           f->fwd->why);
  kp__hub_proxied_local(f->req, f->req->cluster, 502);
  kp__hub_status_json(f, 502, "BadGateway", msg);
}

static void fwd_note(kp__backreq_t *q, kp__conn_t *c, int status) {
  fwd_note_why(kp__relay_user_data(q->relay), c, status);
}

static void fwd_fail_req(kp__backreq_t *q, int status) {
  fwd_fail(kp__relay_user_data(q->relay), status);
}

/* Every peer conn counts in open_conns until it is gone: shutdown waits. */
static void fwd_closed(kp__backpool_t *p) {
  kp_hub_t *hub = p->ud;
  hub->open_conns--;
  kp__hub_maybe_done(hub);
}

/* Dials the front's current forward with the peer certificate (mutual TLS)
 * and a deadline for getting through the handshake. */
static int fwd_dial(kp__backpool_t *p, kp__backreq_t *q, kp__back_t *b) {
  kp_hub_t *hub = p->ud;
  hub_front_t *f = kp__relay_user_data(q->relay);
  int rc;
  f->fwd->why[0] = 0;
  rc = kp__conn_dial(&b->conn, hub->loop, f->fwd->host, f->fwd->port,
                     hub->peer_client, hub->peer_server_name,
                     &kp__back_conn_cbs, b);
  if (rc != 0) return rc;
  kp__conn_set_timeout(b->conn, FWD_DEADLINE_MS);
  kp__conn_join(b->conn, &hub->conns);
  hub->open_conns++;
  return 0;
}

const kp__backpool_hooks_t kp__hub_fwd_hooks = {
    .dial = fwd_dial,
    .note = fwd_note,
    .fail = fwd_fail_req,
    .closed = fwd_closed,
};

int kp__hub_front_retry(kp__relay_t *r, int err) {
  hub_front_t *f = kp__relay_user_data(r);
  (void)err;
  if (!f->forwarding || f->hub->stopping) return 0;
  return kp__backreq_retry(&f->hub->fwd_pool, &f->fwd->req);
}

int kp__hub_front_describe_failure(kp__relay_t *r, int err, char *buf,
                                   size_t len) {
  hub_front_t *f = kp__relay_user_data(r);
  if (!f->forwarding) return 0;
  fwd_note_why(f, NULL, err);
  snprintf(buf, len, "replica %s unreachable: %s", f->fwd->to, f->fwd->why);
  return 1;
}

/* A hop marker goes into a header line: visible ASCII and inner spaces. */
static int hop_ok(const char *hop) {
  size_t i, n = strlen(hop);
  if (n == 0 || n > 200 || hop[0] == ' ' || hop[n - 1] == ' ') return 0;
  for (i = 0; i < n; i++)
    if ((unsigned char)hop[i] < 0x20 || (unsigned char)hop[i] > 0x7e) return 0;
  return 1;
}

void kp__hub_do_forward(hub_front_t *f, const char *cluster, const char *host,
                        int port, const char *hop, const char *fields) {
  kp_hub_t *hub = f->hub;
  const kp_http_head_t *head = kp__relay_current_head(f->relay);
  char extra[512 + 1024];
  /* Authorization goes on: the peer authorizes the request again on its
   * own merits (its mTLS client vouches for the connection, not for what a
   * caller put on it). A caller's Audit-ID does not: the peer takes the
   * one this hub set (`fields`), so both replicas log one ID. */
  static const char *const drop[] = {"x-forwarded-for", "x-forwarded-proto",
                                     "kopilot-forwarded-by", "audit-id",
                                     KP_HTTP_DROP_IDENTITY, NULL};
  hub_fwd_t *w;
  int n, rc;
  f->forwarding = 0;
  f->req->session = 0;
  kp__hub_set_cluster(f->req, cluster);
  if (hub->stopping || head == NULL) {
    kp__hub_proxied_local(f->req, f->req->cluster, 0);
    kp__relay_abort(f->relay, hub->stopping ? KP_ECLOSED : KP_EINVAL);
    return;
  }
  if (f->via_peer) {
    /* The policy never asks this; a safety net against replicas that
     * disagree on who holds a session sending a request round for ever. */
    kp__hub_proxied_local(f->req, f->req->cluster, 508);
    kp__hub_status_json(f, 508, "LoopDetected",
                        "the request was forwarded by another hub replica and cannot "
                        "be forwarded again");
    return;
  }
  if (!hop_ok(hop) || host[0] == 0 || strlen(host) >= sizeof(w->host) ||
      port <= 0 || port > 65535) {
    kp__hub_proxied_local(f->req, f->req->cluster, 500);
    kp__hub_status_json(f, 500, "InternalError",
                        "bad forward answer: host, port or hop marker invalid");
    return;
  }
  if (f->fwd == NULL && (f->fwd = calloc(1, sizeof(*f->fwd))) == NULL) {
    kp__hub_proxied_local(f->req, f->req->cluster, 0);
    kp__relay_abort(f->relay, KP_ENOMEM);
    return;
  }
  w = f->fwd;
  snprintf(w->host, sizeof(w->host), "%s", host);
  w->port = port;
  snprintf(w->to, sizeof(w->to), strchr(host, ':') ? "[%s]:%d" : "%s:%d", host,
           port);
  w->why[0] = 0;
  if (hub->peer_client == NULL) {
    snprintf(w->why, sizeof(w->why), "no peer certificate configured");
    fwd_fail(f, KP_EINVAL);
    return;
  }
  n = snprintf(extra, sizeof(extra),
               "X-Forwarded-For: %.*s\r\nX-Forwarded-Proto: https\r\n"
               "Kopilot-Forwarded-By: %s\r\n%s",
               (int)(strrchr(f->conn->peer, ':') - f->conn->peer),
               f->conn->peer, hop, fields ? fields : "");
  if (n < 0 || (size_t)n >= sizeof(extra)) {
    kp__hub_proxied_local(f->req, f->req->cluster, 500);
    kp__hub_status_json(f, 500, "InternalError", "bad forward answer: fields too long");
    return;
  }
  kp__backreq_clear_head(&w->req);
  w->req.head = kp_http_build_request(head, head->target, head->target_len,
                                      drop, extra, (size_t)n, &w->req.head_len);
  if (w->req.head == NULL) {
    kp__hub_proxied_local(f->req, f->req->cluster, 0);
    kp__relay_abort(f->relay, KP_ENOMEM);
    return;
  }
  if (!kp__http_head_fits(w->req.head, w->req.head_len)) {
    kp__backreq_clear_head(&w->req);
    kp__hub_head_too_big(f, f->req->cluster);
    return;
  }
  w->req.idempotent = kp__backpool_idempotent(head) != 0;
  w->req.key = w->to;
  f->forwarding = 1;
  if ((rc = kp__backreq_start(&hub->fwd_pool, &w->req, f->relay)) != 0)
    fwd_fail(f, rc);
}
