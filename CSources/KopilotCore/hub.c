/* hub.c - the hub's data plane: the caller-facing listeners, agent
 * sessions by cluster, and proxying of caller requests into session
 * streams, on one shard per loop. Policy (who may do what, which token is
 * which cluster) is the owner's: every request head goes to
 * callbacks.on_request, which answers with one of the kp_hub_request_*
 * calls. The files, one concern each:
 *   hub.c           setup, teardown, certificate reload (this file)
 *   hub_listen.c    listeners (SO_REUSEPORT per loop), accepting, handshake
 *                   slots
 *   hub_front.c     a caller's connection: its relay, the answers, proxying
 *                   into a stream, accepting an agent
 *   hub_sessions.c  the session table per loop, the placement table the
 *                   loops share, listing and dropping sessions
 *   hub_move.c      moving a connection to the loop that has its session
 *   hub_forward.c   forwarding to a peer replica
 *   hub_internal.h  the types they share */
#include "hub_internal.h"

/* The peer TLS contexts: the listener's requires a client certificate
 * chained to the peer CA (SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT),
 * the dialing one presents the same certificate and checks the server's
 * against the same CA and peer_server_name. */
static int peer_pair(const char *cert, const char *key, const char *ca,
                     kp_tls_ctx_t **server, kp_tls_ctx_t **client, char *err,
                     size_t errlen) {
  kp_tls_ctx_options_t o;
  int rc;
  *server = *client = NULL;
  memset(&o, 0, sizeof(o));
  o.is_server = 1;
  o.cert_file = cert;
  o.key_file = key;
  o.ca_file = ca;
  o.require_client_cert = 1;
  rc = kp_tls_ctx_new(server, &o, err, errlen);
  if (rc != 0) return rc;
  o.is_server = 0;
  o.require_client_cert = 0;
  rc = kp_tls_ctx_new(client, &o, err, errlen);
  if (rc != 0) {
    kp_tls_ctx_free(*server);
    *server = NULL;
  }
  return rc;
}

static int peer_contexts(kp_hub_t *hub, const kp_hub_config_t *cfg, char *err,
                         size_t errlen) {
  int rc;
  if (cfg->peer_key_file == NULL || cfg->peer_ca_file == NULL) {
    snprintf(err, errlen, "peer forwarding needs a certificate, a key and a CA");
    return KP_EINVAL;
  }
  rc = peer_pair(cfg->peer_cert_file, cfg->peer_key_file, cfg->peer_ca_file,
                 &hub->peer_tls, &hub->peer_client, err, errlen);
  if (rc == 0) {
    hub->peer_server_name = strdup(cfg->peer_server_name ? cfg->peer_server_name
                                                         : FWD_DEFAULT_SERVER_NAME);
    if (hub->peer_server_name == NULL) rc = KP_ENOMEM;
  }
  if (rc != 0) {
    kp_tls_ctx_free(hub->peer_tls);
    kp_tls_ctx_free(hub->peer_client);
    hub->peer_tls = hub->peer_client = NULL;
  }
  return rc;
}

static void peer_contexts_free(kp_hub_t *hub) {
  if (hub->peer_tls) kp_tls_ctx_free(hub->peer_tls);
  if (hub->peer_client) kp_tls_ctx_free(hub->peer_client);
  free(hub->peer_server_name);
  hub->peer_tls = hub->peer_client = NULL;
  hub->peer_server_name = NULL;
}

static void group_free(hub_group_t *g) {
  size_t b;
  if (g == NULL) return;
  for (b = 0; b < HUB_PLACE_BUCKETS; b++) {
    hub_place_t *p = atomic_load(&g->places[b]);
    while (p) {
      hub_place_t *next = atomic_load(&p->next);
      free(p->count);
      free(p);
      p = next;
    }
  }
  uv_mutex_destroy(&g->mu);
  free(g->shards);
  free(g);
}

static void shard_stop_and_free(kp_hub_t *hub);

/* One shard on `loop`, started: listening on cfg's ports (the first) or on
 * the first shard's (the others). The contexts are shared: it takes its
 * own references. */
static int shard_start(hub_group_t *g, size_t i, kp_loop_t *loop,
                       const kp_hub_config_t *cfg,
                       const kp_hub_callbacks_t *cbs, void *ud,
                       kp_hub_t *first, char *err, size_t errlen) {
  kp_hub_t *hub = calloc(1, sizeof(*hub));
  int rc;
  if (hub == NULL) return KP_ENOMEM;
  hub->group = g;
  hub->index = (unsigned)i;
  hub->loop = loop;
  hub->cfg = *cfg;
  hub->cbs = *cbs;
  hub->ud = ud;
  if (first != NULL) {
    hub->tls = first->tls;
    kp_tls_ctx_ref(hub->tls);
    if ((hub->peer_tls = first->peer_tls) != NULL) {
      kp_tls_ctx_ref(hub->peer_tls);
      kp_tls_ctx_ref(first->peer_client);
      hub->peer_client = first->peer_client;
      hub->peer_server_name = strdup(first->peer_server_name);
    }
    hub->cfg.port = first->port;
    hub->cfg.peer_port = first->has_peer_listener ? first->peer_port : -1;
  } else {
    kp_tls_ctx_options_t topt;
    memset(&topt, 0, sizeof(topt));
    topt.is_server = 1;
    topt.cert_file = cfg->cert_file;
    topt.key_file = cfg->key_file;
    rc = kp_tls_ctx_new(&hub->tls, &topt, err, errlen);
    if (rc == 0 && cfg->peer_cert_file != NULL)
      rc = peer_contexts(hub, cfg, err, errlen);
    if (rc != 0) {
      kp_tls_ctx_free(hub->tls);
      free(hub);
      return rc;
    }
  }
  kp__backpool_init(&hub->fwd_pool, &kp__hub_fwd_hooks, hub, FWD_MAX_IDLE, FWD_IDLE_MS);
  hub->err = err;
  hub->errlen = errlen;
  uv_sem_init(&hub->done, 0);
  rc = (hub->tls == NULL || (hub->peer_tls && hub->peer_server_name == NULL))
           ? KP_ENOMEM
           : kp_loop_post(loop, kp__hub_start, hub);
  if (rc == 0) {
    uv_sem_wait(&hub->done);
    rc = hub->setup_rc;
  }
  if (rc != 0) {
    kp_tls_ctx_free(hub->tls);
    peer_contexts_free(hub);
    uv_sem_destroy(&hub->done);
    free(hub);
    return rc;
  }
  hub->err = NULL;
  g->shards[i] = hub;
  return 0;
}

int kp_hub_new_on(kp_hub_t **out, kp_loop_t *const *loops, size_t nloops,
                  const kp_hub_config_t *cfg, const kp_hub_callbacks_t *cbs,
                  void *ud, char *err, size_t errlen) {
  hub_group_t *g;
  size_t i;
  int rc = 0;
  char dummy[1];
  if (err == NULL) {
    err = dummy;
    errlen = sizeof(dummy);
  }
  *out = NULL;
  if (nloops == 0 || nloops > KP_HUB_MAX_LOOPS) {
    snprintf(err, errlen, "the hub runs on 1 to %d loops", KP_HUB_MAX_LOOPS);
    return KP_EINVAL;
  }
  if ((g = calloc(1, sizeof(*g))) == NULL) return KP_ENOMEM;
  if ((g->shards = calloc(nloops, sizeof(*g->shards))) == NULL ||
      uv_mutex_init(&g->mu) != 0) {
    free(g->shards);
    free(g);
    return KP_ENOMEM;
  }
  g->n = nloops;
  for (i = 0; i < nloops && rc == 0; i++)
    rc = shard_start(g, i, loops[i], cfg, cbs, ud, i ? g->shards[0] : NULL,
                     err, errlen);
  if (rc != 0) {
    for (i = nloops; i-- > 0;)
      if (g->shards[i]) shard_stop_and_free(g->shards[i]);
    group_free(g);
    return rc;
  }
  atomic_store_explicit(&g->open, 1, memory_order_release);
  *out = g->shards[0];
  return 0;
}

int kp_hub_new(kp_hub_t **out, kp_loop_t *loop, const kp_hub_config_t *cfg,
               const kp_hub_callbacks_t *cbs, void *ud, char *err,
               size_t errlen) {
  return kp_hub_new_on(out, &loop, 1, cfg, cbs, ud, err, errlen);
}

unsigned kp_hub_loop_count(const kp_hub_t *hub) {
  return (unsigned)hub->group->n;
}

uint64_t kp_hub_accepted(const kp_hub_t *hub, unsigned loop) {
  if (loop >= hub->group->n) return 0;
  return atomic_load_explicit(&hub->group->shards[loop]->accepted,
                              memory_order_relaxed);
}

uint64_t kp_hub_moved(const kp_hub_t *hub) {
  return atomic_load_explicit(&hub->group->moved, memory_order_relaxed);
}

int kp_hub_port(const kp_hub_t *hub) { return hub->port; }

int kp_hub_peer_port(const kp_hub_t *hub) { return hub->peer_port; }

static void listener_closed(uv_handle_t *h) {
  kp_hub_t *hub = h->data;
  hub->listener_closed = 1;
  kp__hub_maybe_done(hub);
}

static void peer_listener_closed(uv_handle_t *h) {
  kp_hub_t *hub = h->data;
  hub->peer_listener_closed = 1;
  kp__hub_maybe_done(hub);
}

static void timer_closed(uv_handle_t *h) {
  kp_hub_t *hub = h->data;
  hub->timer_closed = 1;
  kp__hub_maybe_done(hub);
}

static void hub_stop(void *arg) {
  kp_hub_t *hub = arg;
  hub->stopping = 1;
  kp__backpool_close(&hub->fwd_pool); /* forwards ending now keep no conn */
  uv_close((uv_handle_t *)&hub->hs_timer, timer_closed);
  /* This shard's conns, and only those (a loop shared with an agent or
   * another shard has others): each joined hub->conns when it was made. */
  kp__conn_close_all(&hub->conns, KP_ECLOSED);
  uv_close((uv_handle_t *)&hub->listener, listener_closed);
  if (hub->has_peer_listener)
    uv_close((uv_handle_t *)&hub->peer_listener, peer_listener_closed);
}

static void shard_stop(kp_hub_t *hub) {
  if (kp_loop_post(hub->loop, hub_stop, hub) == 0) uv_sem_wait(&hub->done);
}

static void shard_free(kp_hub_t *hub) {
  kp_tls_ctx_free(hub->tls);
  peer_contexts_free(hub);
  uv_sem_destroy(&hub->done);
  free(hub);
}

static void shard_stop_and_free(kp_hub_t *hub) {
  shard_stop(hub);
  shard_free(hub);
}

static void barrier_run(void *arg) { uv_sem_post(arg); }

void kp_hub_free(kp_hub_t *hub) {
  hub_group_t *g;
  uv_sem_t sem;
  size_t i;
  if (hub == NULL) return;
  g = hub->group;
  atomic_store(&g->open, 0);
  /* Stop every shard, then let each loop run what was posted to it before
   * (a move on its way: a stopping shard refuses it), then free: no loop
   * touches a shard after that. */
  for (i = 0; i < g->n; i++) shard_stop(g->shards[i]);
  uv_sem_init(&sem, 0);
  for (i = 0; i < g->n; i++)
    if (kp_loop_post(g->shards[i]->loop, barrier_run, &sem) == 0)
      uv_sem_wait(&sem);
  uv_sem_destroy(&sem);
  for (i = 0; i < g->n; i++) shard_free(g->shards[i]);
  group_free(g);
}

/* ---- certificate reload ---- */

typedef struct reload_req {
  kp_hub_t *hub;
  kp_tls_ctx_t *tls, *peer_tls, *peer_client; /* NULL: keep the current one */
  uv_sem_t done;
} reload_req_t;

/* On the loop: new connections take the new contexts; each connection holds
 * a reference to the context it was made with, so dropping the hub's own
 * reference to the old one frees it only when its last connection is gone. */
static void swap_ctx(kp_tls_ctx_t **slot, kp_tls_ctx_t *next) {
  kp_tls_ctx_t *old = *slot;
  if (next == NULL || old == NULL) return;
  kp_tls_ctx_ref(next);
  *slot = next;
  kp_tls_ctx_free(old);
}

/* Each shard takes its own reference to the new contexts; the request
 * keeps its own until every shard has its. */
static void reload_run(void *arg) {
  reload_req_t *r = arg;
  kp_hub_t *hub = r->hub;
  swap_ctx(&hub->tls, r->tls);
  swap_ctx(&hub->peer_tls, r->peer_tls);
  swap_ctx(&hub->peer_client, r->peer_client);
  uv_sem_post(&r->done);
}

int kp_hub_reload_tls(kp_hub_t *hub, const char *cert_file,
                      const char *key_file, const char *peer_cert_file,
                      const char *peer_key_file, const char *peer_ca_file,
                      char *err, size_t errlen) {
  reload_req_t r;
  kp_tls_ctx_options_t o;
  size_t i;
  int rc;
  char dummy[1];
  if (err == NULL) {
    err = dummy;
    errlen = sizeof(dummy);
  }
  for (i = 0; i < hub->group->n; i++)
    if (kp_loop_is_current(hub->group->shards[i]->loop)) return KP_EINVAL;
  memset(&r, 0, sizeof(r));
  memset(&o, 0, sizeof(o));
  o.is_server = 1;
  o.cert_file = cert_file;
  o.key_file = key_file;
  rc = kp_tls_ctx_new(&r.tls, &o, err, errlen);
  /* The peer contexts are replaced only where there were some. */
  if (rc == 0 && peer_cert_file != NULL && hub->cfg.peer_cert_file != NULL)
    rc = peer_pair(peer_cert_file, peer_key_file, peer_ca_file, &r.peer_tls,
                   &r.peer_client, err, errlen);
  if (rc == 0) {
    uv_sem_init(&r.done, 0);
    for (i = 0; i < hub->group->n && rc == 0; i++) {
      r.hub = hub->group->shards[i];
      rc = kp_loop_post(r.hub->loop, reload_run, &r);
      if (rc == 0) uv_sem_wait(&r.done);
    }
    uv_sem_destroy(&r.done);
  }
  /* The shards hold their own references. */
  kp_tls_ctx_free(r.tls);
  kp_tls_ctx_free(r.peer_tls);
  kp_tls_ctx_free(r.peer_client);
  return rc;
}
