/* hub_move.c - moving a connection, with its request and the answer, to
 * the loop that holds a session of its cluster. See hub.c. */
#include "hub_internal.h"

/* ---- moving a caller to another loop ----
 *
 * A request whose cluster has no session on this loop, and an agent whose
 * cluster has fewer sessions on another loop, move their connection there
 * at the request boundary, with the decision already made: the socket and
 * the TLS engine (kp__conn_detach), the head and whatever followed it, and
 * the answer. The other loop wraps the conn and resumes the request in a
 * new relay, with the head as parsed here (kp__relay_take_request and
 * kp__relay_resume: it is not parsed again), and applies the answer
 * without asking the owner again. kubectl and client-go keep one cluster per connection,
 * so a connection moves at most once in the common case; the bytes of an
 * exchange never cross threads. A move waits while the conn still has
 * writes queued (a pipelined earlier response), since those belong to
 * this loop's handle. */
typedef struct hub_move {
  kp_hub_t *to;
  uv_os_sock_t fd;
  struct kp_tls *tls;
  kp_http_head_t *head; /* parsed, pointing into bytes */
  uint8_t *bytes;        /* the head and what followed it */
  size_t head_len, len;
  int kind, via_peer;
  char *cluster, *target, *fields;
  uint64_t started_ns, id;
} hub_move_t;

static void moved_closed(kp__conn_t *c, int status) {
  kp_hub_t *hub = c->ud;
  (void)status;
  hub->open_conns--;
  kp__hub_maybe_done(hub);
}

static const kp__conn_cbs_t moved_cbs = {.on_close = moved_closed};

static void move_free(hub_move_t *m) {
  free(m->head);
  free(m->bytes);
  free(m->cluster);
  free(m->target);
  free(m->fields);
  free(m);
}

/* A moved request that will not run is reported as never run (status 0;
 * the owner counted it in flight). */
static void move_lost(kp_hub_t *hub, hub_move_t *m) {
  if (m->kind == MOVE_PROXY)
    kp__hub_report_unrun(hub, m->cluster, m->id, m->started_ns);
}

/* On the destination loop. */
static void move_arrive(void *arg) {
  hub_move_t *m = arg;
  kp_hub_t *hub = m->to;
  hub_front_t *f = NULL;
  kp__relay_config_t rc = {hub->cfg.max_head, 0};
  kp__ep_t ep;
  if (hub->stopping || (f = calloc(1, sizeof(*f))) == NULL ||
      kp__conn_adopt(&f->conn, hub->loop, m->fd, m->tls, &kp__hub_front_cbs, f) != 0) {
    free(f);
    close(m->fd);
    kp_tls_free(m->tls);
    move_lost(hub, m);
    move_free(m);
    return;
  }
  kp__conn_join(f->conn, &hub->conns);
  hub->open_conns++;
  f->hub = hub;
  f->via_peer = m->via_peer;
  f->moved_started_ns = m->started_ns;
  f->moved_id = m->id;
  f->moved_kind = m->kind;
  f->moved_cluster = m->cluster;
  f->moved_target = m->target;
  f->moved_fields = m->fields;
  m->cluster = m->target = m->fields = NULL;
  ep.ops = &kp__conn_ep_ops;
  ep.h = f->conn;
  if (kp__relay_new(&f->relay, ep, &kp__hub_front_router, &rc, f) != 0) {
    kp__conn_close(f->conn, KP_ENOMEM); /* front_closed reports it */
    move_free(m);
    return;
  }
  f->arriving = 1;
  kp__relay_resume(f->relay, m->head, m->head_len, m->bytes, m->len);
  m->head = NULL;
  m->bytes = NULL;
  f->arriving = 0;
  if (f->freed_late) kp__hub_front_free(f); /* went on (see arriving) */
  else if (f->relay) kp__relay_front_start(f->relay);
  move_free(m);
}

/* Moves f's conn and its current request to `to` with the decision (kind,
 * cluster, target, the hub's fields for the member). Returns 0 when the
 * request is no longer this loop's (moved, waiting to move, or lost and
 * reported), else an error and f is untouched: serve it here. */
int kp__hub_move_front(hub_front_t *f, kp_hub_t *to, int kind,
                       const char *cluster, const char *target,
                       const char *fields) {
  kp_hub_t *hub = f->hub;
  kp__conn_t *conn = f->conn;
  hub_move_t *m;
  if (f->relay == NULL || conn == NULL) return KP_EINVAL;
  if (!kp__conn_movable(conn)) {
    /* Earlier responses still queued: front_written moves it once they
     * are out. Anything else (EOF, closing) is served here. */
    if (conn->closing || conn->eof || conn->shut || f->move_to) return KP_EINVAL;
    if ((f->moved_cluster = strdup(cluster)) == NULL) return KP_ENOMEM;
    if ((target && (f->moved_target = strdup(target)) == NULL) ||
        (fields && (f->moved_fields = strdup(fields)) == NULL)) {
      free(f->moved_cluster);
      free(f->moved_target);
      f->moved_cluster = f->moved_target = NULL;
      return KP_ENOMEM;
    }
    f->moved_kind = kind;
    f->moved_started_ns = f->req->started_ns;
    f->moved_id = f->req->id;
    f->move_to = to;
    return 0;
  }
  if ((m = calloc(1, sizeof(*m))) == NULL ||
      (m->cluster = strdup(cluster)) == NULL ||
      (target && (m->target = strdup(target)) == NULL) ||
      (fields && (m->fields = strdup(fields)) == NULL)) {
    if (m) move_free(m);
    return KP_ENOMEM;
  }
  m->to = to;
  m->kind = kind;
  m->via_peer = f->via_peer;
  m->started_ns = f->req->started_ns;
  m->id = f->req->id;
  m->fd = -1;
  /* From here the request is the move's: f goes with the relay. */
  f->detached = 1;
  conn->cbs = &moved_cbs;
  conn->ud = hub;
  f->conn = NULL;
  if (kp__relay_take_request(f->relay, &m->head, &m->head_len, &m->bytes, &m->len) != 0 ||
      kp__conn_detach(conn, &m->fd, &m->tls) != 0) {
    if (!conn->closing) kp__conn_close(conn, KP_ENOMEM);
    move_lost(hub, m);
    move_free(m);
    return 0;
  }
  if (kp_loop_post(to->loop, move_arrive, m) != 0) {
    close(m->fd);
    kp_tls_free(m->tls);
    move_lost(hub, m);
    move_free(m);
    return 0;
  }
  atomic_fetch_add_explicit(&hub->group->moved, 1, memory_order_relaxed);
  return 0;
}

/* A move that waited for queued writes, now that they are out. */
void kp__hub_move_when_drained(hub_front_t *f) {
  kp_hub_t *to = f->move_to;
  int kind = f->moved_kind;
  char *cluster = f->moved_cluster, *target = f->moved_target;
  char *fields = f->moved_fields;
  if (to == NULL || !kp__conn_movable(f->conn)) return;
  f->move_to = NULL;
  f->moved_kind = 0;
  f->moved_cluster = f->moved_target = f->moved_fields = NULL;
  if (kp__hub_move_front(f, to, kind, cluster, target, fields) != 0) {
    /* Could not go after all: served here. */
    f->pinned = 1;
    if (kind == MOVE_PROXY) kp__hub_do_proxy(f, cluster, target, fields);
    else kp__hub_do_accept_agent(f, cluster);
  }
  free(cluster);
  free(target);
  free(fields);
}
