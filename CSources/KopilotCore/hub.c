/* hub.c - the hub's data plane: the caller-facing listener, agent sessions
 * by cluster, and proxying of caller requests into session streams. Policy
 * (who may do what, which token is which cluster) is the owner's: every
 * request head goes to callbacks.on_request, which answers with one of the
 * kp_hub_request_* calls. */
#include "backpool.h"
#include "session.h"

#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <sys/socket.h>

#define HUB_BUCKETS 4096
/* TLS handshakes in flight at once. More connections wait in the kernel's
 * accept queue: each handshake holds tens of KiB of OpenSSL buffers for a
 * moment, and thousands at once (agents reconnecting after a restart) would
 * leave the heap fragmented for good - measured: 49 KiB of resident memory
 * per idle session after 1,000 simultaneous connects, 19 KiB when they
 * came in a few at a time. 128 keeps 10,000 sessions at 15.5 KiB each and
 * still lets them all back within 8 s of a restart (64: 9.8 s; 256: 17.4
 * KiB, 8.0 s; kopilot-perf --scenarios idle,storm). A connection counts for
 * at most
 * HUB_HANDSHAKE_SLOT_MS (its handshake may go on): clients that stall their
 * handshakes on purpose can slow accepting down, never stop it. */
#define HUB_MAX_HANDSHAKES 128
#define HUB_HANDSHAKE_SLOT_MS 500
/* The longest cluster ID, namespace_name: a DNS-1123 label (63), '_' and a
 * DNS-1123 subdomain (253). */
#define HUB_CLUSTER_ID_MAX (63 + 1 + 253)

/* ---- loops ----
 *
 * The hub runs one shard per loop: a shard is a kp_hub_t with its own
 * listeners (SO_REUSEPORT on one port, so the kernel spreads connections
 * over the loops), handshake slots, session table and peer pool, and only
 * its loop thread touches it. What the shards share is the group: the TLS
 * contexts (reference-counted, read-only) and the placement table, which
 * says how many sessions of each cluster each loop holds. A request whose
 * cluster has no session on its own loop moves its connection to a loop
 * that has one, at the request boundary (see "moving a caller"), so the
 * bytes of an exchange never cross threads. */
#define HUB_PLACE_BUCKETS 1024

/* One cluster's sessions per loop. Entries are only ever added (one per
 * cluster an agent announced; the registry bounds them) and read without a
 * lock: a chain's links are published with release stores. */
typedef struct hub_place {
  struct hub_place *_Atomic next;
  atomic_uint *count; /* [group->n] */
  char id[];
} hub_place_t;

typedef struct hub_group {
  size_t n;
  struct kp_hub **shards;
  uv_mutex_t mu; /* adding places */
  hub_place_t *_Atomic places[HUB_PLACE_BUCKETS];
  atomic_uint spread; /* rotates the first loop a search looks at */
  atomic_ullong moved; /* callers and agents moved to another loop */
  /* Every shard is up (shards[] is complete): moves may start. Cleared
   * when the hub stops. */
  atomic_int open;
} hub_group_t;

typedef struct hub_cluster {
  struct hub_cluster *next; /* bucket chain */
  kp__sess_t *sessions;     /* doubly linked through sess->next/prev */
  size_t count;
  char id[];
} hub_cluster_t;

struct kp_hub {
  kp_loop_t *loop;
  hub_group_t *group;
  unsigned index;        /* this shard's loop in group->shards */
  atomic_ullong accepted; /* caller and agent connections accepted here */
  uv_tcp_t listener;
  kp_tls_ctx_t *tls;
  kp_hub_config_t cfg;
  kp_hub_callbacks_t cbs;
  void *ud;
  int port;
  hub_cluster_t *buckets[HUB_BUCKETS];
  /* Every live caller conn and session conn, for shutdown. */
  size_t open_conns;
  /* Conns holding a handshake slot, oldest first (see above). */
  struct hub_front *hs_head, *hs_tail;
  size_t handshaking;
  int accept_waiting;  /* a connection waits for uv_accept */
  uv_timer_t hs_timer; /* expires the oldest slot while accepting waits */
  int stopping, listener_closed, timer_closed, done_posted;
  uv_sem_t done;
  int setup_rc;
  int setup_closing; /* handles a failed start is still closing */
  char *err;
  size_t errlen;
  /* Peer forwarding (see "forwarding to a peer replica" below). */
  uv_tcp_t peer_listener;
  kp_tls_ctx_t *peer_tls;    /* the peer listener's: client certs required */
  kp_tls_ctx_t *peer_client; /* dialing peers, with the same certificate */
  char *peer_server_name;
  int peer_port;             /* 0: no peer listener */
  int has_peer_listener, peer_listener_closed;
  kp__backpool_t fwd_pool;   /* idle peer conns, keyed by "host:port" */
};

enum { MOVE_PROXY = 1, MOVE_AGENT = 2 };

/* kp_hub_request_t is never defined: the handle given out is the caller's
 * hub_front_t, cast. */

typedef struct hub_front {
  kp_hub_t *hub;
  kp__conn_t *conn;
  kp__relay_t *relay;
  int detached; /* the conn became an agent session */
  /* An answer is owed from on_request until the owner gives it; the
   * request handle (this record) must outlive the conn until then. Loop
   * thread only: answers from other threads are counted when they run. */
  int owed;
  int gone;     /* conn closed while an answer was owed: free on answer */
  int handshaking;     /* holds a slot: on the hub's hs_ list */
  struct hub_front *hs_next, *hs_prev;
  uint64_t hs_since;   /* loop time (ms) the slot was taken */
  uint64_t started_ns; /* when the current request head was complete */
  uint64_t session;    /* that carries the current proxied request */
  /* The current request's cluster, as on_proxied reports it: any cluster
   * ID fits whole (HUB_CLUSTER_ID_MAX), so a proxied request is reported on
   * the ID it was answered with, never a truncated one. */
  char cluster[HUB_CLUSTER_ID_MAX + 1];
  /* The key a forward of the current request is reported on
   * (target_cluster), taken from its head once, when the head is in: a
   * forward uses it, and so does an answer that comes after the caller
   * left, when the head is gone. */
  char fwd_key[HUB_CLUSTER_ID_MAX + 1];
  int via_peer;        /* accepted on the peer listener */
  /* The current forward to a peer replica (fwd_to[0] == 0: none). */
  kp__backreq_t fwd;   /* its head and peer conn (key: fwd_to) */
  char fwd_host[256];
  int fwd_port;
  char fwd_to[300];    /* "host:port", for messages and the idle pool */
  char fwd_why[256];   /* why the peer conn failed, first reason */
  /* A failed exchange on a reused peer conn that may yet be retried: its
   * on_proxied waits, so a retried forward is reported once. */
  unsigned proxied_held : 1;
  uint64_t held_up, held_down;
  /* Moving between loops (see "moving a caller"). pinned: the current
   * request came with a decision from another loop and does not move
   * again. moved_*: that decision, until the relay parses the head here. */
  unsigned pinned : 1;
  int moved_kind; /* 0 none, MOVE_PROXY, MOVE_AGENT */
  char *moved_cluster, *moved_target;
  /* Waiting for its queued writes to drain before moving to move_to. */
  kp_hub_t *move_to;
  /* An answer from another thread that could not be copied for the loop
   * (out of memory) fails the request there through this node, which needs
   * no allocation; lost_kind is that answer's kind (its key, for a proxy,
   * is put in `cluster`, which the loop leaves alone while an answer is
   * owed). */
  kp__work_t lost;
  int lost_kind;
} hub_front_t;

static void front_free(hub_front_t *f) {
  kp__backreq_clear_head(&f->fwd);
  free(f->moved_cluster);
  free(f->moved_target);
  free(f);
}

/* Posts `done` once both the listener and every conn are closed. */
static void maybe_done(kp_hub_t *hub) {
  if (hub->stopping && hub->listener_closed && hub->timer_closed &&
      (!hub->has_peer_listener || hub->peer_listener_closed) &&
      hub->open_conns == 0 && !hub->done_posted) {
    hub->done_posted = 1;
    uv_sem_post(&hub->done);
  }
}

static uint32_t hash_str(const char *s) {
  uint32_t h = 2166136261u; /* FNV-1a */
  while (*s) {
    h ^= (uint8_t)*s++;
    h *= 16777619u;
  }
  return h;
}

static hub_cluster_t *cluster_find(kp_hub_t *hub, const char *id, int create) {
  uint32_t b = hash_str(id) % HUB_BUCKETS;
  hub_cluster_t *c;
  for (c = hub->buckets[b]; c; c = c->next)
    if (strcmp(c->id, id) == 0) return c;
  if (!create) return NULL;
  c = calloc(1, sizeof(*c) + strlen(id) + 1);
  if (c == NULL) return NULL;
  strcpy(c->id, id);
  c->next = hub->buckets[b];
  hub->buckets[b] = c;
  return c;
}

/* The placement entry of a cluster; created when asked (NULL: out of
 * memory, or absent and not asked). Any thread. */
static hub_place_t *place_find(hub_group_t *g, const char *id, int create) {
  uint32_t b = hash_str(id) % HUB_PLACE_BUCKETS;
  hub_place_t *p;
  for (p = atomic_load_explicit(&g->places[b], memory_order_acquire); p;
       p = atomic_load_explicit(&p->next, memory_order_acquire))
    if (strcmp(p->id, id) == 0) return p;
  if (!create) return NULL;
  uv_mutex_lock(&g->mu);
  /* Another loop may have added it since the lock-free look. */
  for (p = atomic_load_explicit(&g->places[b], memory_order_acquire); p;
       p = atomic_load_explicit(&p->next, memory_order_acquire))
    if (strcmp(p->id, id) == 0) break;
  if (p == NULL && (p = calloc(1, sizeof(*p) + strlen(id) + 1)) != NULL) {
    p->count = calloc(g->n, sizeof(*p->count));
    if (p->count == NULL) {
      free(p);
      p = NULL;
    } else {
      strcpy(p->id, id);
      atomic_store_explicit(&p->next,
                            atomic_load_explicit(&g->places[b],
                                                 memory_order_relaxed),
                            memory_order_relaxed);
      atomic_store_explicit(&g->places[b], p, memory_order_release);
    }
  }
  uv_mutex_unlock(&g->mu);
  return p;
}

static void place_count(kp_hub_t *hub, const char *id, int delta) {
  hub_place_t *p;
  if (hub->group->n < 2) return;
  p = place_find(hub->group, id, delta > 0);
  if (p == NULL) return;
  if (delta > 0) {
    atomic_fetch_add(&p->count[hub->index], 1);
  } else {
    /* Never below 0, should an add have failed for want of memory. */
    unsigned v = atomic_load(&p->count[hub->index]);
    while (v > 0 &&
           !atomic_compare_exchange_weak(&p->count[hub->index], &v, v - 1)) {
    }
  }
}

/* Another loop for `cluster`: for a request (agent 0), one that holds a
 * session of it, NULL when none does; for an agent session, the loop with
 * the fewest of its sessions when this loop has more than that (so a
 * cluster's sessions spread over the loops), else NULL. The first loop
 * looked at rotates, so requests spread over the loops that qualify. */
static kp_hub_t *other_loop(kp_hub_t *hub, const char *cluster, int agent) {
  hub_group_t *g = hub->group;
  hub_place_t *p;
  size_t i, start, best = g->n;
  unsigned mine, fewest = UINT_MAX;
  if (g->n < 2 || !atomic_load_explicit(&g->open, memory_order_acquire))
    return NULL;
  p = place_find(g, cluster, 0);
  mine = p ? atomic_load(&p->count[hub->index]) : 0;
  start = atomic_fetch_add_explicit(&g->spread, 1, memory_order_relaxed) % g->n;
  for (i = 0; i < g->n; i++) {
    size_t j = (start + i) % g->n;
    unsigned n = p ? atomic_load(&p->count[j]) : 0;
    if (j == hub->index) continue;
    if (!agent && n > 0) return g->shards[j];
    if (agent && n < fewest) {
      fewest = n;
      best = j;
    }
  }
  return agent && best < g->n && fewest < mine ? g->shards[best] : NULL;
}

static void cluster_remove_session(kp_hub_t *hub, kp__sess_t *s) {
  hub_cluster_t *c = cluster_find(hub, s->cluster, 0);
  if (c == NULL) return;
  place_count(hub, s->cluster, -1);
  if (s->prev) s->prev->next = s->next;
  else c->sessions = s->next;
  if (s->next) s->next->prev = s->prev;
  s->next = s->prev = NULL;
  c->count--;
  if (c->count == 0) {
    uint32_t b = hash_str(c->id) % HUB_BUCKETS;
    hub_cluster_t **pp = &hub->buckets[b];
    while (*pp != c) pp = &(*pp)->next;
    *pp = c->next;
    free(c);
  }
}

/* ---- agent sessions ---- */

static void hub_sess_stream(kp__sess_t *s, kp_mux_stream_t *st) {
  (void)s;
  /* Agents do not open streams to the hub. */
  kp_mux_stream_reset(st);
}

static void hub_sess_close(kp__sess_t *s, int status) {
  kp_hub_t *hub = s->ud;
  if (s->cluster == NULL) {
    /* Ended before it was announced (bad bytes right behind the upgrade,
     * or out of memory): nothing to remove and nobody to tell. */
    hub->open_conns--;
    maybe_done(hub);
    return;
  }
  cluster_remove_session(hub, s);
  hub->open_conns--;
  if (hub->cbs.on_session)
    hub->cbs.on_session(hub, s->cluster, s->id, 0, status, hub->ud);
  free(s->cluster);
  s->cluster = NULL;
  maybe_done(hub);
}

static const kp__sess_owner_t hub_sess_owner = {
    .on_stream = hub_sess_stream,
    .on_close = hub_sess_close,
};

/* Least open streams wins; ties go to a random one among them, so a burst
 * of new requests spreads over equal sessions. */
static kp__sess_t *pick_session(hub_cluster_t *c, kp__sess_t *skip) {
  kp__sess_t *s, *best = NULL;
  uint32_t best_n = UINT32_MAX, ties = 0;
  for (s = c->sessions; s; s = s->next) {
    uint32_t n;
    if (s == skip || s->closing || s->mux_closed) continue;
    n = kp_mux_num_streams(s->mux);
    if (n < best_n) {
      best = s;
      best_n = n;
      ties = 1;
    } else if (n == best_n && (uint32_t)rand() % ++ties == 0) {
      best = s;
    }
  }
  return best;
}

/* ---- caller connections ---- */

static void do_proxy(hub_front_t *f, const char *cluster, const char *target);
static void do_accept_agent(hub_front_t *f, const char *cluster);
static void proxied_local(hub_front_t *f, const char *key, int status);
static void move_when_drained(hub_front_t *f);
static int move_front(hub_front_t *f, kp_hub_t *to, int kind,
                      const char *cluster, const char *target);

/* A stream carries one request: done or reusable, it is closed (FIN); a
 * failed exchange resets it. */
static void front_release_back(kp__relay_t *r, kp__ep_t back,
                               kp__relay_back_end_t how) {
  hub_front_t *f = kp__relay_user_data(r);
  kp_mux_stream_t *st = back.h;
  if (back.ops == &kp__conn_ep_ops) {
    kp__backreq_release(&f->fwd, back, how); /* a peer replica's conn */
    return;
  }
  kp_mux_stream_set_user_data(st, NULL);
  if (how != KP__RELAY_BACK_FAILED) kp_mux_stream_close(st);
  else kp_mux_stream_reset(st);
}

/* Reports a held exchange (see front_exchange) that was not retried. */
static void flush_held(hub_front_t *f) {
  kp_hub_t *hub = f->hub;
  if (!f->proxied_held) return;
  f->proxied_held = 0;
  if (hub->cbs.on_proxied)
    hub->cbs.on_proxied(hub, f->cluster, 0, 0, f->held_up, f->held_down,
                        (uv_hrtime() - f->started_ns) / 1000, hub->ud);
}

static void front_done(kp__relay_t *r) {
  hub_front_t *f = kp__relay_user_data(r);
  flush_held(f);
  f->relay = NULL;
  kp__backreq_orphan(&f->fwd); /* a peer conn still dialing goes away */
  if (f->detached) {
    /* The conn went to an agent session; this record is ours to free. The
     * relay may finish inside take_front or only when its pump unwinds. */
    front_free(f);
    return;
  }
  if (f->conn) kp__conn_close(f->conn, 0);
}

/* The cluster a forwarded target names, "/proxy/<cluster>/...", as the key
 * on_proxied reports (the target as sent; the peer's policy normalizes
 * it): the segment when it could be a cluster ID, 1 to HUB_CLUSTER_ID_MAX
 * bytes of [a-z0-9._-], else "" - never a truncated one, and nothing a
 * caller can grow. HubMetrics.forwardKey (Swift) mirrors this byte for
 * byte: the owner counts the request in under that key and out under this
 * one, so the two must agree. */
static void target_cluster(const kp_http_head_t *h, char *out, size_t cap) {
  static const char pre[] = "/proxy/";
  size_t pl = sizeof(pre) - 1, i = pl, n;
  out[0] = 0;
  if (h->target_len <= pl || memcmp(h->target, pre, pl) != 0) return;
  for (; i < h->target_len && h->target[i] != '/' && h->target[i] != '?'; i++) {
    char c = h->target[i];
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
          c == '-' || c == '_'))
      return;
  }
  n = i - pl;
  if (n == 0 || n > HUB_CLUSTER_ID_MAX || n >= cap) return;
  memcpy(out, h->target + pl, n);
  out[n] = 0;
}

static void front_on_request(kp__relay_t *r, const kp_http_head_t *head,
                             const uint8_t *raw, size_t raw_len) {
  hub_front_t *f = kp__relay_user_data(r);
  (void)raw;
  (void)raw_len;
  flush_held(f);
  /* The head is in: no deadline while the request and its response run
   * (a watch or an exec may last hours). */
  kp__conn_set_timeout(f->conn, 0);
  f->pinned = 0;
  if (f->moved_kind) {
    /* Moved here from another loop with its answer (see "moving a
     * caller"): the owner was asked there, and is not asked again. */
    int kind = f->moved_kind;
    char *cluster = f->moved_cluster, *target = f->moved_target;
    f->moved_kind = 0;
    f->moved_cluster = f->moved_target = NULL;
    f->pinned = 1;
    target_cluster(head, f->fwd_key, sizeof(f->fwd_key));
    if (kind == MOVE_PROXY) do_proxy(f, cluster, target);
    else do_accept_agent(f, cluster);
    free(cluster);
    free(target);
    return;
  }
  f->owed = 1;
  f->started_ns = uv_hrtime();
  target_cluster(head, f->fwd_key, sizeof(f->fwd_key));
  f->hub->cbs.on_request(f->hub, (kp_hub_request_t *)f, head, f->conn->peer,
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
  if (status == 0 && f->fwd_to[0] && f->fwd.reused && f->fwd.idempotent &&
      !f->fwd.retried) {
    /* front_retry may send it again (then this report is dropped); any
     * other ending reports it (flush_held). */
    f->proxied_held = 1;
    f->held_up = up;
    f->held_down = down;
    return;
  }
  if (hub->cbs.on_proxied)
    hub->cbs.on_proxied(hub, f->cluster, f->session, status, up, down,
                        (uv_hrtime() - f->started_ns) / 1000, hub->ud);
}

static int front_retry(kp__relay_t *r, int err);
static int front_describe_failure(kp__relay_t *r, int err, char *buf,
                                  size_t len);

static const kp__relay_router_t front_router = {
    .on_request = front_on_request,
    .on_exchange = front_exchange,
    .release_back = front_release_back,
    .retry = front_retry,
    .describe_failure = front_describe_failure,
    .on_idle = front_idle,
    .on_done = front_done,
};

static void handshake_over(hub_front_t *f);
static void slots_expire(uv_timer_t *t);

static void front_ready(kp__conn_t *c, int status) {
  hub_front_t *f = c->ud;
  kp__ep_t ep = {&kp__conn_ep_ops, c};
  kp__relay_config_t rc = {f->hub->cfg.max_head, 0};
  handshake_over(f);
  if (status != 0) return; /* on_close follows */
  if (kp__relay_new(&f->relay, ep, &front_router, &rc, f) != 0) {
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
  if (f->move_to) move_when_drained(f);
}

static void front_closed(kp__conn_t *c, int status) {
  hub_front_t *f = c->ud;
  kp_hub_t *hub = f->hub;
  f->conn = NULL;
  handshake_over(f);
  if (f->moved_kind == MOVE_PROXY) /* moved or about to, never run */
    proxied_local(f, f->moved_cluster, 0);
  f->moved_kind = 0;
  f->move_to = NULL;
  if (f->relay) kp__relay_front_closed(f->relay, status);
  if (f->owed) f->gone = 1; /* the owner's answer frees it */
  else front_free(f);
  hub->open_conns--;
  maybe_done(hub);
}

static const kp__conn_cbs_t front_cbs = {
    .on_ready = front_ready,
    .on_read = front_read,
    .on_eof = front_eof,
    .on_written = front_written,
    .on_drained = front_drained,
    .on_close = front_closed,
};

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

static void accept_one(kp_hub_t *hub) {
  hub_front_t *f = calloc(1, sizeof(*f));
  uv_stream_t *server = (uv_stream_t *)&hub->listener;
  if (f == NULL) {
    drop_pending(server);
    return;
  }
  f->hub = hub;
  if (kp__conn_accept(&f->conn, hub->loop, server, hub->tls, &front_cbs, f) != 0) {
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
  if (kp__conn_accept(&f->conn, hub->loop, server, hub->peer_tls, &front_cbs,
                      f) != 0) {
    free(f);
    drop_pending(server);
    return;
  }
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

static void handshake_over(hub_front_t *f) {
  if (!f->handshaking) return;
  slot_release(f->hub, f);
  resume_accepting(f->hub);
}

/* ---- answers ---- */

static void respond_json(hub_front_t *f, int status, const char *reason,
                         const char *ctype, const char *body, size_t len,
                         int close) {
  size_t n;
  uint8_t *resp = kp__http_build_response(status, reason, ctype, body, len,
                                          close, &n);
  if (resp == NULL) {
    kp__relay_abort(f->relay, KP_ENOMEM);
    return;
  }
  kp__relay_respond(f->relay, resp, n, close);
  free(resp);
}

/* A Status answer, with `extra` (whole header lines, or "") after the
 * status line. */
static void status_json_with(hub_front_t *f, int status, const char *reason,
                             const char *msg, const char *extra) {
  size_t n, head, x = strlen(extra);
  uint8_t *resp = kp__http_build_status(status, reason, msg, 0, &n), *out;
  uint8_t *eol = resp ? memchr(resp, '\n', n) : NULL;
  if (eol != NULL && x == 0) {
    kp__relay_respond(f->relay, resp, n, 0);
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
  kp__relay_respond(f->relay, out, n + x, 0);
  free(out);
  free(resp);
}

static void status_json(hub_front_t *f, int status, const char *reason,
                        const char *msg) {
  status_json_with(f, status, reason, msg, "");
}

/* Answers posted from another thread carry their arguments here. */
typedef struct answer {
  hub_front_t *f;
  int kind; /* 0 proxy, 1 respond, 2 agent, 3 forward (cluster = host,
              * target = hop, status = port) */
  int status;
  char *cluster, *target, *ctype, *body;
  size_t body_len;
} answer_t;

static void do_forward(hub_front_t *f, const char *host, int port,
                       const char *hop);

/* Every proxy and forward answer ends in exactly one on_proxied (the owner
 * counted it in flight under `key`). This one reports those that carried
 * no exchange: answered here (a 503, a 508) or never run (the caller left,
 * memory ran out: status 0, no response). */
static void proxied_local(hub_front_t *f, const char *key, int status) {
  kp_hub_t *hub = f->hub;
  if (hub->cbs.on_proxied)
    hub->cbs.on_proxied(hub, key, 0, status, 0, 0,
                        (uv_hrtime() - f->started_ns) / 1000, hub->ud);
}

static void answer_run(void *arg) {
  answer_t *a = arg;
  a->f->owed = 0;
  if (a->f->gone || a->f->relay == NULL) {
    if (a->kind == 0) proxied_local(a->f, a->cluster ? a->cluster : "", 0);
    else if (a->kind == 3) proxied_local(a->f, a->f->fwd_key, 0);
    if (a->f->gone) front_free(a->f);
  } else {
    if (a->kind == 0) do_proxy(a->f, a->cluster, a->target);
    else if (a->kind == 2) do_accept_agent(a->f, a->cluster);
    else if (a->kind == 3) do_forward(a->f, a->cluster, a->status, a->target);
    else respond_json(a->f, a->status, kp__http_reason(a->status),
                      a->ctype ? a->ctype : "application/json", a->body,
                      a->body_len, 0);
  }
  free(a->cluster);
  free(a->target);
  free(a->ctype);
  free(a->body);
  free(a);
}


/* On the loop: the answer that was lost (see hub_front_t.lost). The owner
 * counted a proxy or a forward in flight: it is reported as never run, and
 * the caller's connection is closed rather than left waiting. */
static void answer_lost_run(void *arg) {
  hub_front_t *f = arg;
  f->owed = 0;
  if (f->lost_kind == 0) proxied_local(f, f->cluster, 0);
  else if (f->lost_kind == 3) proxied_local(f, f->fwd_key, 0);
  if (f->gone) front_free(f);
  else if (f->relay) kp__relay_abort(f->relay, KP_ENOMEM);
}

/* From another thread: copies the answer for the loop and posts it.
 * Returns 0; KP_ENOMEM when it could not be copied (the request fails on
 * the loop instead, see answer_lost_run); KP_ECLOSED when the hub stops. */
static int post_answer(hub_front_t *f, int kind, int status,
                       const char *cluster, const char *target,
                       const char *ctype, const char *body, size_t len) {
  answer_t *a = calloc(1, sizeof(*a));
  int rc;
  if (a != NULL) {
    a->f = f;
    a->kind = kind;
    a->status = status;
    if ((cluster && (a->cluster = strdup(cluster)) == NULL) ||
        (target && (a->target = strdup(target)) == NULL) ||
        (ctype && (a->ctype = strdup(ctype)) == NULL) ||
        (len && (a->body = malloc(len)) == NULL)) {
      free(a->cluster);
      free(a->target);
      free(a->ctype);
      free(a);
      a = NULL;
    } else {
      if (len) memcpy(a->body, body, len);
      a->body_len = len;
    }
  }
  if (a == NULL) {
    f->lost_kind = kind;
    if (kind == 0) snprintf(f->cluster, sizeof(f->cluster), "%s", cluster);
    f->lost.fn = answer_lost_run;
    f->lost.arg = f;
    rc = kp__loop_post_node(f->hub->loop, &f->lost);
    return rc != 0 ? rc : KP_ENOMEM;
  }
  rc = kp_loop_post(f->hub->loop, answer_run, a);
  if (rc != 0) {
    free(a->cluster);
    free(a->target);
    free(a->ctype);
    free(a->body);
    free(a);
  }
  return rc;
}

/* The head is parsed again from the relay's copy: the pointers handed to
 * on_request are gone once an answer comes from another thread. */
static int current_head(hub_front_t *f, kp_http_head_t *head);

static void do_proxy(hub_front_t *f, const char *cluster, const char *target) {
  kp_hub_t *hub = f->hub;
  hub_cluster_t *c = cluster_find(hub, cluster, 0);
  kp__sess_t *s, *tried = NULL;
  kp_http_head_t head;
  char extra[256], msg[384];
  /* A caller's credentials and any identity it claims never reach a
   * member: the only identity a member may see is one the hub set. */
  static const char *const drop[] = {"authorization", "x-forwarded-for",
                                     "x-forwarded-proto",
                                     "kopilot-forwarded-by",
                                     KP_HTTP_DROP_IDENTITY, NULL};
  /* From a peer replica, X-Forwarded-For names the caller already (the
   * peer is authenticated; its own address says nothing). */
  static const char *const drop_peer[] = {"authorization",
                                          "kopilot-forwarded-by",
                                          KP_HTTP_DROP_IDENTITY, NULL};
  uint8_t *req;
  size_t req_len;
  int n, keep_xff;
  f->fwd_to[0] = 0;
  if (!f->pinned && (c == NULL || pick_session(c, NULL) == NULL)) {
    kp_hub_t *to = other_loop(hub, cluster, 0);
    if (to != NULL && move_front(f, to, MOVE_PROXY, cluster, target) == 0)
      return;
  }
  if (current_head(f, &head) != 0) {
    proxied_local(f, cluster, 0);
    kp__relay_abort(f->relay, KP_EBADMSG);
    return;
  }
  keep_xff = f->via_peer && kp_http_find_header(&head, "x-forwarded-for") != NULL;
  if (keep_xff)
    n = 0;
  else
    n = snprintf(extra, sizeof(extra),
                 "X-Forwarded-For: %.*s\r\nX-Forwarded-Proto: https\r\n",
                 (int)(strrchr(f->conn->peer, ':') - f->conn->peer), f->conn->peer);
  req = kp_http_build_request(&head, target, strlen(target),
                               keep_xff ? drop_peer : drop, extra, (size_t)n,
                               &req_len);
  if (req == NULL) {
    proxied_local(f, cluster, 0);
    kp__relay_abort(f->relay, KP_ENOMEM);
    return;
  }
  /* A stream that cannot be opened moves on to the next session before any
   * byte was sent. */
  while (c != NULL && (s = pick_session(c, tried)) != NULL) {
    kp_mux_stream_t *st;
    kp__ep_t ep;
    /* The stream's window tuning measures from now, not from the
     * session's last read (maybe a keepalive ago). */
    kp_mux_set_now(s->mux, uv_now(kp__loop_uv(hub->loop)));
    if (kp_mux_open(s->mux, &st) != 0) {
      tried = s;
      continue;
    }
    kp_mux_stream_set_user_data(st, f->relay);
    snprintf(f->cluster, sizeof(f->cluster), "%s", cluster);
    f->session = s->id;
    ep.ops = &kp__stream_ep_ops;
    ep.h = st;
    kp__relay_attach(f->relay, ep, req, req_len);
    free(req);
    return;
  }
  free(req);
  snprintf(msg, sizeof(msg), "no agent of cluster %s is connected", cluster);
  status_json(f, 503, "ServiceUnavailable", msg);
  proxied_local(f, cluster, 503);
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

static void do_accept_agent(hub_front_t *f, const char *cluster) {
  kp_hub_t *hub = f->hub;
  kp_http_head_t head;
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
    kp_hub_t *to = other_loop(hub, cluster, 1);
    if (to != NULL && move_front(f, to, MOVE_AGENT, cluster, NULL) == 0)
      return;
  }
  rc = current_head(f, &head);
  if (rc == 0) rc = ws_request_check(&head, &key, &key_len);
  if (rc == KP_EUNSUPPORTED) {
    /* RFC 6455 4.2.2 / 4.4: 426 naming the version we speak. */
    status_json_with(f, 426, "UpgradeRequired",
                     "only WebSocket version 13 is spoken here",
                     "Sec-WebSocket-Version: 13\r\n");
    return;
  }
  if (rc != 0 || kp_ws_accept_key(key, key_len, accept) != 0) {
    status_json(f, 400, "BadRequest", "expected a WebSocket upgrade (RFC 6455)");
    return;
  }
  framed = kp__headers_list(head.headers, head.num_headers,
                            "sec-websocket-protocol", KP_WS_SUBPROTOCOL,
                            strlen(KP_WS_SUBPROTOCOL));
  n = snprintf(resp, sizeof(resp),
               "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n%s\r\n",
               accept,
               framed ? "Sec-WebSocket-Protocol: " KP_WS_SUBPROTOCOL "\r\n" : "");
  c = cluster_find(hub, cluster, 1);
  if (c == NULL) {
    kp__relay_abort(f->relay, KP_ENOMEM);
    return;
  }
  f->detached = 1; /* before take_front: its on_done must not close conn */
  /* After this, f belongs to the relay's on_done (front_done frees it). */
  rc = kp__relay_take_front(f->relay, 0, &rest, &rest_len);
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
                      hub->cfg.keepalive_ms, &hub_sess_owner, hub, rest,
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
  place_count(hub, cluster, 1);
  if (hub->cbs.on_session) hub->cbs.on_session(hub, s->cluster, s->id, 1, 0, hub->ud);
}

/* ---- moving a caller to another loop ----
 *
 * A request whose cluster has no session on this loop, and an agent whose
 * cluster has fewer sessions on another loop, move their connection there
 * at the request boundary, with the decision already made: the socket and
 * the TLS engine (kp__conn_detach), the head and whatever followed it, and
 * the answer. The other loop wraps the conn, feeds the bytes to a new relay,
 * and applies the answer when the relay has parsed the head, without asking
 * the owner again. kubectl and client-go keep one cluster per connection,
 * so a connection moves at most once in the common case; the bytes of an
 * exchange never cross threads. A move waits while the conn still has
 * writes queued (a pipelined earlier response), since those belong to
 * this loop's handle. */
typedef struct hub_move {
  kp_hub_t *to;
  uv_os_sock_t fd;
  struct kp_tls *tls;
  uint8_t *bytes; /* the head and what followed it */
  size_t len;
  int kind, via_peer;
  char *cluster, *target;
  uint64_t started_ns;
} hub_move_t;

static void moved_closed(kp__conn_t *c, int status) {
  kp_hub_t *hub = c->ud;
  (void)status;
  hub->open_conns--;
  maybe_done(hub);
}

static const kp__conn_cbs_t moved_cbs = {.on_close = moved_closed};

static void move_free(hub_move_t *m) {
  free(m->bytes);
  free(m->cluster);
  free(m->target);
  free(m);
}

/* A moved request that will not run is reported as never run (status 0;
 * the owner counted it in flight). */
static void move_lost(kp_hub_t *hub, hub_move_t *m) {
  if (m->kind == MOVE_PROXY && hub->cbs.on_proxied)
    hub->cbs.on_proxied(hub, m->cluster, 0, 0, 0, 0,
                        (uv_hrtime() - m->started_ns) / 1000, hub->ud);
}

/* On the destination loop. */
static void move_arrive(void *arg) {
  hub_move_t *m = arg;
  kp_hub_t *hub = m->to;
  hub_front_t *f = NULL;
  kp__relay_config_t rc = {hub->cfg.max_head, 0};
  kp__ep_t ep;
  kp_chunk_t *chunk;
  if (hub->stopping || (f = calloc(1, sizeof(*f))) == NULL ||
      kp__conn_adopt(&f->conn, hub->loop, m->fd, m->tls, &front_cbs, f) != 0) {
    free(f);
    close(m->fd);
    kp_tls_free(m->tls);
    move_lost(hub, m);
    move_free(m);
    return;
  }
  hub->open_conns++;
  f->hub = hub;
  f->via_peer = m->via_peer;
  f->started_ns = m->started_ns;
  f->moved_kind = m->kind;
  f->moved_cluster = m->cluster;
  f->moved_target = m->target;
  m->cluster = m->target = NULL;
  ep.ops = &kp__conn_ep_ops;
  ep.h = f->conn;
  chunk = kp_chunk_new(m->len);
  if (chunk == NULL || kp__relay_new(&f->relay, ep, &front_router, &rc, f) != 0) {
    kp_chunk_unref(chunk);
    kp__conn_close(f->conn, KP_ENOMEM); /* front_closed reports it */
    move_free(m);
    return;
  }
  memcpy(kp_chunk_data(chunk), m->bytes, m->len);
  kp__relay_front_data(f->relay, kp_chunk_data(chunk), m->len, chunk);
  kp_chunk_unref(chunk);
  if (f->relay) kp__relay_front_start(f->relay);
  move_free(m);
}

/* Moves f's conn and its current request to `to` with the decision (kind,
 * cluster, target). Returns 0 when the request is no longer this loop's
 * (moved, waiting to move, or lost and reported), else an error and f is
 * untouched: serve it here. */
static int move_front(hub_front_t *f, kp_hub_t *to, int kind,
                      const char *cluster, const char *target) {
  kp_hub_t *hub = f->hub;
  kp__conn_t *conn = f->conn;
  hub_move_t *m;
  if (f->relay == NULL || conn == NULL) return KP_EINVAL;
  if (!kp__conn_movable(conn)) {
    /* Earlier responses still queued: front_written moves it once they
     * are out. Anything else (EOF, closing) is served here. */
    if (conn->closing || conn->eof || conn->shut || f->move_to) return KP_EINVAL;
    if ((f->moved_cluster = strdup(cluster)) == NULL) return KP_ENOMEM;
    if (target && (f->moved_target = strdup(target)) == NULL) {
      free(f->moved_cluster);
      f->moved_cluster = NULL;
      return KP_ENOMEM;
    }
    f->moved_kind = kind;
    f->move_to = to;
    return 0;
  }
  if ((m = calloc(1, sizeof(*m))) == NULL ||
      (m->cluster = strdup(cluster)) == NULL ||
      (target && (m->target = strdup(target)) == NULL)) {
    if (m) move_free(m);
    return KP_ENOMEM;
  }
  m->to = to;
  m->kind = kind;
  m->via_peer = f->via_peer;
  m->started_ns = f->started_ns;
  m->fd = -1;
  /* From here the request is the move's: f goes with the relay. */
  f->detached = 1;
  conn->cbs = &moved_cbs;
  conn->ud = hub;
  f->conn = NULL;
  if (kp__relay_take_front(f->relay, 1, &m->bytes, &m->len) != 0 ||
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
static void move_when_drained(hub_front_t *f) {
  kp_hub_t *to = f->move_to;
  int kind = f->moved_kind;
  char *cluster = f->moved_cluster, *target = f->moved_target;
  if (to == NULL || !kp__conn_movable(f->conn)) return;
  f->move_to = NULL;
  f->moved_kind = 0;
  f->moved_cluster = f->moved_target = NULL;
  if (move_front(f, to, kind, cluster, target) != 0) {
    /* Could not go after all: served here. */
    f->pinned = 1;
    if (kind == MOVE_PROXY) do_proxy(f, cluster, target);
    else do_accept_agent(f, cluster);
  }
  free(cluster);
  free(target);
}

int kp_hub_request_proxy(kp_hub_request_t *req, const char *cluster,
                         const char *target) {
  hub_front_t *f = (hub_front_t *)req;
  if (!kp_loop_is_current(f->hub->loop))
    return post_answer(f, 0, 0, cluster, target, NULL, NULL, 0);
  f->owed = 0;
  do_proxy(f, cluster, target);
  return 0;
}

int kp_hub_request_respond(kp_hub_request_t *req, int status,
                           const char *content_type, const char *body,
                           size_t body_len) {
  hub_front_t *f = (hub_front_t *)req;
  if (!kp_loop_is_current(f->hub->loop))
    return post_answer(f, 1, status, NULL, NULL, content_type, body, body_len);
  f->owed = 0;
  respond_json(f, status, kp__http_reason(status),
               content_type ? content_type : "application/json", body,
               body_len, 0);
  return 0;
}

int kp_hub_request_accept_agent(kp_hub_request_t *req, const char *cluster) {
  hub_front_t *f = (hub_front_t *)req;
  if (!kp_loop_is_current(f->hub->loop))
    return post_answer(f, 2, 0, cluster, NULL, NULL, NULL, 0);
  f->owed = 0;
  do_accept_agent(f, cluster);
  return 0;
}

int kp_hub_request_forward(kp_hub_request_t *req, const char *host, int port,
                           const char *hop) {
  hub_front_t *f = (hub_front_t *)req;
  if (!kp_loop_is_current(f->hub->loop))
    return post_answer(f, 3, port, host ? host : "", hop ? hop : "", NULL,
                       NULL, 0);
  f->owed = 0;
  do_forward(f, host ? host : "", port, hop ? hop : "");
  return 0;
}

int kp_hub_request_via_peer(const kp_hub_request_t *req) {
  return ((const hub_front_t *)req)->via_peer;
}

/* ---- forwarding to a peer replica ----
 *
 * The caller's connection stays the relay's front; the back is a TLS conn
 * to the peer's listener, dialed with the peer certificate (mutual TLS),
 * so the relay treats it as agent.c treats an upstream conn: body and
 * response streaming with backpressure, upgrades, keep-alive. A conn that
 * ended at a request boundary waits a few seconds in a small pool for the
 * next forward to the same host:port (the peer keeps an idle conn for its
 * head deadline, 30 s by default, so ours goes first); a pooled conn that
 * died as a request crossed it is retried once on a new conn when the
 * request may be sent twice (no body, an idempotent method). */
#define FWD_DEADLINE_MS 5000 /* resolve + connect + TLS handshake */
#define FWD_MAX_IDLE 64
#define FWD_IDLE_MS 10000
#define FWD_DEFAULT_SERVER_NAME "kopilot-hub-peer"

/* Keeps the first reason a peer conn failed for the 502's message. */
static void fwd_note_why(hub_front_t *f, kp__conn_t *c, int status) {
  const char *tls = c && c->tls ? kp_tls_last_error(c->tls) : "";
  if (f->fwd_why[0]) return;
  if (status == 0)
    snprintf(f->fwd_why, sizeof(f->fwd_why),
             "the connection closed before the response began");
  else if ((status == KP_ECERT || status == KP_ETLS) && tls && tls[0])
    snprintf(f->fwd_why, sizeof(f->fwd_why), "%s: %s", kp_strerror(status), tls);
  else
    snprintf(f->fwd_why, sizeof(f->fwd_why), "%s", kp_strerror(status));
}


/* No response head will come from the peer: 502 naming it. */
static void fwd_fail(hub_front_t *f, int status) {
  char msg[600];
  fwd_note_why(f, NULL, status);
  snprintf(msg, sizeof(msg), "replica %s unreachable: %s", f->fwd_to, f->fwd_why);
  proxied_local(f, f->cluster, 502);
  status_json(f, 502, "BadGateway", msg);
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
  maybe_done(hub);
}

/* Dials the front's current forward with the peer certificate (mutual TLS)
 * and a deadline for getting through the handshake. */
static int fwd_dial(kp__backpool_t *p, kp__backreq_t *q, kp__back_t *b) {
  kp_hub_t *hub = p->ud;
  hub_front_t *f = kp__relay_user_data(q->relay);
  int rc;
  f->fwd_why[0] = 0;
  rc = kp__conn_dial(&b->conn, hub->loop, f->fwd_host, f->fwd_port,
                     hub->peer_client, hub->peer_server_name,
                     &kp__back_conn_cbs, b);
  if (rc != 0) return rc;
  kp__conn_set_timeout(b->conn, FWD_DEADLINE_MS);
  hub->open_conns++;
  return 0;
}

static const kp__backpool_hooks_t fwd_hooks = {
    .dial = fwd_dial,
    .note = fwd_note,
    .fail = fwd_fail_req,
    .closed = fwd_closed,
};

static int front_retry(kp__relay_t *r, int err) {
  hub_front_t *f = kp__relay_user_data(r);
  (void)err;
  if (f->fwd_to[0] == 0 || f->hub->stopping) return 0;
  if (!kp__backreq_retry(&f->hub->fwd_pool, &f->fwd)) return 0;
  f->proxied_held = 0; /* the new attempt reports */
  return 1;
}

static int front_describe_failure(kp__relay_t *r, int err, char *buf,
                                  size_t len) {
  hub_front_t *f = kp__relay_user_data(r);
  flush_held(f);
  if (f->fwd_to[0] == 0) return 0;
  fwd_note_why(f, NULL, err);
  snprintf(buf, len, "replica %s unreachable: %s", f->fwd_to, f->fwd_why);
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


static void do_forward(hub_front_t *f, const char *host, int port,
                       const char *hop) {
  kp_hub_t *hub = f->hub;
  kp_http_head_t head;
  char extra[512];
  /* Authorization goes on: the peer authorizes the request again on its
   * own merits (its mTLS client vouches for the connection, not for what a
   * caller put on it). */
  static const char *const drop[] = {"x-forwarded-for", "x-forwarded-proto",
                                     "kopilot-forwarded-by",
                                     KP_HTTP_DROP_IDENTITY, NULL};
  int n, rc;
  f->fwd_to[0] = 0;
  f->session = 0;
  if (hub->stopping || current_head(f, &head) != 0) {
    proxied_local(f, f->fwd_key, 0);
    kp__relay_abort(f->relay, hub->stopping ? KP_ECLOSED : KP_EBADMSG);
    return;
  }
  memcpy(f->cluster, f->fwd_key, sizeof(f->cluster));
  if (f->via_peer) {
    /* The policy never asks this; a safety net against replicas that
     * disagree on who holds a session sending a request round for ever. */
    proxied_local(f, f->cluster, 508);
    status_json(f, 508, "LoopDetected",
                "the request was forwarded by another hub replica and cannot "
                "be forwarded again");
    return;
  }
  if (!hop_ok(hop) || host[0] == 0 || strlen(host) >= sizeof(f->fwd_host) ||
      port <= 0 || port > 65535) {
    proxied_local(f, f->cluster, 500);
    status_json(f, 500, "InternalError",
                "bad forward answer: host, port or hop marker invalid");
    return;
  }
  snprintf(f->fwd_host, sizeof(f->fwd_host), "%s", host);
  f->fwd_port = port;
  snprintf(f->fwd_to, sizeof(f->fwd_to), strchr(host, ':') ? "[%s]:%d" : "%s:%d",
           host, port);
  if (hub->peer_client == NULL) {
    f->fwd_why[0] = 0;
    snprintf(f->fwd_why, sizeof(f->fwd_why), "no peer certificate configured");
    fwd_fail(f, KP_EINVAL);
    return;
  }
  n = snprintf(extra, sizeof(extra),
               "X-Forwarded-For: %.*s\r\nX-Forwarded-Proto: https\r\n"
               "Kopilot-Forwarded-By: %s\r\n",
               (int)(strrchr(f->conn->peer, ':') - f->conn->peer),
               f->conn->peer, hop);
  kp__backreq_clear_head(&f->fwd);
  f->fwd.head = kp_http_build_request(&head, head.target, head.target_len,
                                       drop, extra, (size_t)n, &f->fwd.head_len);
  if (f->fwd.head == NULL) {
    proxied_local(f, f->cluster, 0);
    kp__relay_abort(f->relay, KP_ENOMEM);
    return;
  }
  f->fwd.idempotent = kp__backpool_idempotent(&head) != 0;
  f->fwd.key = f->fwd_to;
  f->fwd_why[0] = 0;
  if ((rc = kp__backreq_start(&hub->fwd_pool, &f->fwd, f->relay)) != 0)
    fwd_fail(f, rc);
}

/* ---- setup and teardown ---- */

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

static void hub_start(void *arg) {
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
  kp__backpool_init(&hub->fwd_pool, &fwd_hooks, hub, FWD_MAX_IDLE, FWD_IDLE_MS);
  hub->err = err;
  hub->errlen = errlen;
  uv_sem_init(&hub->done, 0);
  rc = (hub->tls == NULL || (hub->peer_tls && hub->peer_server_name == NULL))
           ? KP_ENOMEM
           : kp_loop_post(loop, hub_start, hub);
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

static void close_every_conn(uv_handle_t *h, void *arg) {
  kp_hub_t *hub = arg;
  kp__conn_t *c;
  /* Conns are the only uv_tcp_t handles besides the listener here; their
   * data pointer is the conn (see conn.c). */
  if (h->type != UV_TCP || h == (uv_handle_t *)&hub->listener ||
      (hub->has_peer_listener && h == (uv_handle_t *)&hub->peer_listener) ||
      uv_is_closing(h))
    return;
  c = h->data;
  if ((c->cbs == &front_cbs && ((hub_front_t *)c->ud)->hub == hub) ||
      (c->cbs == &kp__back_conn_cbs &&
       ((kp__back_t *)c->ud)->pool == &hub->fwd_pool) ||
      (c->cbs == &kp__sess_conn_cbs && ((kp__sess_t *)c->ud)->ud == hub))
    kp__conn_close(c, KP_ECLOSED);
}

static void listener_closed(uv_handle_t *h) {
  kp_hub_t *hub = h->data;
  hub->listener_closed = 1;
  maybe_done(hub);
}

static void peer_listener_closed(uv_handle_t *h) {
  kp_hub_t *hub = h->data;
  hub->peer_listener_closed = 1;
  maybe_done(hub);
}

static void timer_closed(uv_handle_t *h) {
  kp_hub_t *hub = h->data;
  hub->timer_closed = 1;
  maybe_done(hub);
}

static void hub_stop(void *arg) {
  kp_hub_t *hub = arg;
  hub->stopping = 1;
  kp__backpool_close(&hub->fwd_pool); /* forwards ending now keep no conn */
  uv_close((uv_handle_t *)&hub->hs_timer, timer_closed);
  /* Only this hub's conns may be closed: a loop shared with an agent has
   * other tcp handles. The walk closes conns whose cbs belong to the hub. */
  uv_walk(kp__loop_uv(hub->loop), close_every_conn, hub);
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

typedef struct drop_req {
  kp_hub_t *hub;
  char *cluster;
} drop_req_t;

static void drop_run(void *arg) {
  drop_req_t *d = arg;
  hub_cluster_t *c = cluster_find(d->hub, d->cluster, 0);
  kp__sess_t *s;
  for (s = c ? c->sessions : NULL; s; s = s->next)
    if (!s->closing) kp__sess_close(s, KP_ECLOSED);
  free(d->cluster);
  free(d);
}

int kp_hub_drop_cluster(kp_hub_t *hub, const char *cluster) {
  hub_group_t *g = hub->group;
  size_t i;
  int rc = 0;
  for (i = 0; i < g->n && rc == 0; i++) {
    drop_req_t *d = malloc(sizeof(*d));
    if (d == NULL || (d->cluster = strdup(cluster)) == NULL) {
      free(d);
      return KP_ENOMEM;
    }
    d->hub = g->shards[i];
    rc = kp_loop_post(d->hub->loop, drop_run, d);
    if (rc != 0) {
      free(d->cluster);
      free(d);
    }
  }
  return rc;
}

static int current_head(hub_front_t *f, kp_http_head_t *head) {
  const uint8_t *raw;
  size_t len;
  kp__relay_current_head(f->relay, &raw, &len);
  return kp_http_parse_request(raw, len, 0, head) > 0 ? 0 : KP_EBADMSG;
}

/* ---- listing sessions ---- */

typedef struct list_req {
  kp_hub_t *hub;
  void (*cb)(const kp_hub_session_info_t *info, void *arg);
  void *arg;
  uv_sem_t done;
} list_req_t;

static void list_run(void *arg) {
  list_req_t *l = arg;
  size_t b;
  for (b = 0; b < HUB_BUCKETS; b++) {
    hub_cluster_t *c;
    for (c = l->hub->buckets[b]; c; c = c->next) {
      kp__sess_t *s;
      for (s = c->sessions; s; s = s->next) {
        kp_hub_session_info_t info;
        if (s->closing || s->mux_closed) continue;
        info.cluster = c->id;
        info.session = s->id;
        info.streams = kp_mux_num_streams(s->mux);
        info.framed = s->framed;
        info.peer = s->conn->peer;
        info.loop = l->hub->index;
        l->cb(&info, l->arg);
      }
    }
  }
  uv_sem_post(&l->done);
}

int kp_hub_list_sessions(kp_hub_t *hub,
                         void (*cb)(const kp_hub_session_info_t *info,
                                    void *arg),
                         void *arg) {
  list_req_t l;
  size_t i;
  int rc = 0;
  l.cb = cb;
  l.arg = arg;
  if (uv_sem_init(&l.done, 0) != 0) return KP_ENOMEM;
  for (i = 0; i < hub->group->n && rc == 0; i++) {
    l.hub = hub->group->shards[i];
    rc = kp_loop_post(l.hub->loop, list_run, &l);
    if (rc == 0) uv_sem_wait(&l.done);
  }
  uv_sem_destroy(&l.done);
  return rc;
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
