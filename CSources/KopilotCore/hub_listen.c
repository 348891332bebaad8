/* hub_listen.c - the hub's listeners and accepting: one caller listener
 * and one peer listener per loop, on shared ports, and the handshake slots
 * that bound TLS handshakes in flight. See hub.c. */
#include "hub_internal.h"

/* Takes the connection libuv holds for us. Until uv_accept runs, libuv
 * stops polling the listener, so the kernel queues further connections. */
static void close_free(uv_handle_t *h) { free(h); }

/* Out of memory: takes the waiting connection (if it is still waiting) and
 * closes it, or the listener would stay paused for good. */
static void drop_pending(uv_stream_t *server) {
  uv_tcp_t *t = malloc(sizeof(*t));
  if (t == NULL || uv_tcp_init(server->loop, t) != 0) {
    free(t);
    return;
  }
  (void)uv_accept(server, (uv_stream_t *)t); /* UV_EAGAIN if taken already */
  uv_close((uv_handle_t *)t, close_free);
}

static void slots_expire(uv_timer_t *t);

static void accept_one(kp_hub_t *hub) {
  hub_front_t *f = calloc(1, sizeof(*f));
  uv_stream_t *server = (uv_stream_t *)&hub->listener;
  if (f == NULL) {
    drop_pending(server);
    return;
  }
  f->hub = hub;
  if (kp__conn_accept(&f->conn, hub->loop, server, hub->tls, &kp__hub_front_cbs, f) != 0) {
    free(f);
    drop_pending(server);
    return;
  }
  f->handshaking = 1;
  f->hs_since = uv_now(server->loop);
  f->hs_prev = hub->hs_tail;
  if (hub->hs_tail) hub->hs_tail->hs_next = f;
  else hub->hs_head = f;
  hub->hs_tail = f;
  hub->handshaking++;
  kp__conn_join(f->conn, &hub->conns);
  hub->open_conns++;
  atomic_fetch_add_explicit(&hub->accepted, 1, memory_order_relaxed);
}

static void slot_release(kp_hub_t *hub, hub_front_t *f) {
  if (f->hs_prev) f->hs_prev->hs_next = f->hs_next;
  else hub->hs_head = f->hs_next;
  if (f->hs_next) f->hs_next->hs_prev = f->hs_prev;
  else hub->hs_tail = f->hs_prev;
  f->hs_next = f->hs_prev = NULL;
  f->handshaking = 0;
  hub->handshaking--;
}

static void resume_accepting(kp_hub_t *hub) {
  if (!hub->accept_waiting || hub->stopping || hub->listener_closed) return;
  if (hub->handshaking >= HUB_MAX_HANDSHAKES) {
    /* Still full: look again when the oldest slot runs out. */
    uint64_t now = uv_now(hub->listener.loop);
    uint64_t end = hub->hs_head->hs_since + HUB_HANDSHAKE_SLOT_MS;
    uv_timer_start(&hub->hs_timer, slots_expire, end > now ? end - now : 1, 0);
    return;
  }
  uv_timer_stop(&hub->hs_timer);
  hub->accept_waiting = 0;
  accept_one(hub);
}

static void slots_expire(uv_timer_t *t) {
  kp_hub_t *hub = t->data;
  uint64_t now = uv_now(t->loop);
  while (hub->hs_head && now - hub->hs_head->hs_since >= HUB_HANDSHAKE_SLOT_MS)
    slot_release(hub, hub->hs_head);
  resume_accepting(hub);
}

/* The peer listener: other replicas only, authenticated by their client
 * certificates, so no handshake slots (those guard against floods of
 * agents) - a handful of peers with keep-alive conns. */
static void on_peer_connection(uv_stream_t *server, int status) {
  kp_hub_t *hub = server->data;
  hub_front_t *f;
  if (status < 0 || hub->stopping) return;
  f = calloc(1, sizeof(*f));
  if (f == NULL) {
    drop_pending(server);
    return;
  }
  f->hub = hub;
  f->via_peer = 1;
  if (kp__conn_accept(&f->conn, hub->loop, server, hub->peer_tls, &kp__hub_front_cbs,
                      f) != 0) {
    free(f);
    drop_pending(server);
    return;
  }
  kp__conn_join(f->conn, &hub->conns);
  hub->open_conns++;
}

static void on_connection(uv_stream_t *server, int status) {
  kp_hub_t *hub = server->data;
  if (status < 0 || hub->stopping) return;
  if (hub->handshaking >= HUB_MAX_HANDSHAKES) {
    hub->accept_waiting = 1; /* a handshake ending or slots_expire takes it */
    resume_accepting(hub);     /* arms the timer */
    return;
  }
  accept_one(hub);
}

void kp__hub_handshake_over(hub_front_t *f) {
  if (!f->handshaking) return;
  slot_release(f->hub, f);
  resume_accepting(f->hub);
}

/* ---- starting a shard: its listeners ---- */

/* A failed start closes what it opened; kp_hub_new frees the hub only
 * after the loop is done with those handles. */
static void setup_handle_closed(uv_handle_t *h) {
  kp_hub_t *hub = h->data;
  if (--hub->setup_closing == 0) uv_sem_post(&hub->done);
}

/* Opens t on the loop, binds and listens on host:port; *bound gets the
 * port bound, *opened says whether t must be closed. With reuseport, the
 * socket joins the others bound to that port with SO_REUSEPORT (one per
 * loop): the kernel spreads new connections over them by their address
 * hash. Only processes of the same user can join such a group. */
static int listen_on(uv_loop_t *loop, uv_tcp_t *t, const char *host, int port,
                     int reuseport, uv_connection_cb cb, int *bound,
                     int *opened, char *err, size_t errlen) {
  struct sockaddr_storage ss;
  int rc, len = sizeof(ss), one = 1;
  uv_os_fd_t fd;
  if (strchr(host, ':'))
    rc = uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss);
  else
    rc = uv_ip4_addr(host, port, (struct sockaddr_in *)&ss);
  if (rc != 0) {
    snprintf(err, errlen, "bad bind address %s: %s", host, uv_strerror(rc));
    return rc;
  }
  rc = uv_tcp_init_ex(loop, t, ss.ss_family);
  if (rc != 0) {
    snprintf(err, errlen, "socket for %s:%d: %s", host, port, uv_strerror(rc));
    return rc;
  }
  *opened = 1;
  /* Debian's libuv 1.44 has no UV_TCP_REUSEPORT: set it on the socket. */
  if (reuseport && (uv_fileno((uv_handle_t *)t, &fd) != 0 ||
                    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one,
                               sizeof(one)) != 0)) {
    snprintf(err, errlen, "SO_REUSEPORT on %s:%d failed", host, port);
    return UV_EINVAL;
  }
  rc = uv_tcp_bind(t, (struct sockaddr *)&ss, 0);
  /* A deep accept queue: while handshakes are bounded (see the top),
   * thousands of agents reconnecting at once wait there; one that does not
   * fit loses its SYN and retries only after a second or more. The kernel
   * caps this at net.core.somaxconn. */
  if (rc == 0) rc = uv_listen((uv_stream_t *)t, 65535, cb);
  if (rc == 0) rc = uv_tcp_getsockname(t, (struct sockaddr *)&ss, &len);
  if (rc == 0)
    *bound = ntohs(ss.ss_family == AF_INET
                       ? ((struct sockaddr_in *)&ss)->sin_port
                       : ((struct sockaddr_in6 *)&ss)->sin6_port);
  else
    snprintf(err, errlen, "listen on %s:%d: %s", host, port, uv_strerror(rc));
  return rc;
}

void kp__hub_start(void *arg) {
  kp_hub_t *hub = arg;
  int rc, listener_open = 0, reuse = hub->group->n > 1;
  const char *host = hub->cfg.bind_host ? hub->cfg.bind_host : "0.0.0.0";
  uv_timer_init(kp__loop_uv(hub->loop), &hub->hs_timer);
  hub->hs_timer.data = hub;
  hub->listener.data = hub;
  rc = listen_on(kp__loop_uv(hub->loop), &hub->listener, host, hub->cfg.port,
                 reuse, on_connection, &hub->port, &listener_open, hub->err,
                 hub->errlen);
  if (rc == 0 && hub->peer_tls != NULL && hub->cfg.peer_port >= 0) {
    const char *ph = hub->cfg.peer_bind_host ? hub->cfg.peer_bind_host : host;
    hub->peer_listener.data = hub;
    rc = listen_on(kp__loop_uv(hub->loop), &hub->peer_listener, ph,
                   hub->cfg.peer_port, reuse, on_peer_connection,
                   &hub->peer_port, &hub->has_peer_listener, hub->err,
                   hub->errlen);
  }
  hub->setup_rc = rc;
  if (rc == 0) {
    uv_sem_post(&hub->done);
    return;
  }
  hub->setup_closing = 1 + listener_open + hub->has_peer_listener;
  uv_close((uv_handle_t *)&hub->hs_timer, setup_handle_closed);
  if (listener_open) uv_close((uv_handle_t *)&hub->listener, setup_handle_closed);
  if (hub->has_peer_listener)
    uv_close((uv_handle_t *)&hub->peer_listener, setup_handle_closed);
}
