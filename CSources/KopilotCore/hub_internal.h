/* hub_internal.h - the hub's private types, shared by its files (see
 * hub.c for the map). Everything here belongs to one shard (one loop)
 * except hub_group_t, which the shards share. */
#ifndef KOPILOT_HUB_INTERNAL_H
#define KOPILOT_HUB_INTERNAL_H

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
  atomic_ullong requests; /* request IDs handed out (kp_hub_request_id) */
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
  /* Every live conn of this shard: callers, sessions, peer conns and moving
   * ones, counted until their on_close (shutdown waits for 0). The live
   * ones are in `conns`, which stopping closes. */
  size_t open_conns;
  kp__conn_set_t conns;
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

/* One request, from its head to its end: the handle the owner answers
 * (kp_hub_request_t is this, cast), its answer slot, and what the request
 * is reported under. Made when the relay has the head (whose parse the
 * relay keeps for the request's life, kp__relay_current_head); freed with
 * the next request or the connection, unless an answer is still owed: a
 * caller that leaves before the owner answers leaves this behind (f NULL)
 * for the answer to free, and takes its connection record with it. */
typedef struct hub_req {
  struct kp_hub *hub;
  struct hub_front *f; /* NULL once the caller's connection is gone */
  /* The owner's answer is still to come. Loop thread only: answers from
   * other threads are counted when they run. */
  unsigned owed : 1;
  unsigned via_peer : 1; /* came in on the peer listener */
  uint64_t started_ns;   /* when its head was complete */
  uint64_t id;           /* kp_hub_request_id: kept across a move */
  uint64_t session;      /* that carries it, when proxied */
  /* An answer from another thread that could not be copied for the loop
   * (out of memory) fails the request there through this node, which needs
   * no allocation; lost_kind is that answer's kind (its key, for a proxy or
   * a forward, is put in `cluster`, which the loop leaves alone while an
   * answer is owed). */
  kp__work_t lost;
  int lost_kind;
  /* What on_proxied reports it under: any cluster ID fits whole
   * (HUB_CLUSTER_ID_MAX), so a request is reported on the ID it was
   * answered with, never a truncated one. */
  char cluster[HUB_CLUSTER_ID_MAX + 1];
} hub_req_t;

/* A caller connection's forward to a peer replica (hub_forward.c). Made by
 * its first forward and kept for the next ones, so a connection that never
 * forwards (every one in the embedded mode) carries none of it. */
typedef struct hub_fwd {
  kp__backreq_t req; /* its head and peer conn (key: to) */
  char host[256];
  int port;
  char to[300];      /* "host:port", for messages and the idle pool */
  char why[256];     /* why the peer conn failed, first reason */
} hub_fwd_t;

typedef struct hub_front {
  kp_hub_t *hub;
  kp__conn_t *conn;
  kp__relay_t *relay;
  int detached; /* the conn became an agent session */
  hub_req_t *req; /* the current request; NULL before the first */
  int handshaking;     /* holds a slot: on the hub's hs_ list */
  struct hub_front *hs_next, *hs_prev;
  uint64_t hs_since;   /* loop time (ms) the slot was taken */
  int via_peer;        /* accepted on the peer listener */
  /* The current request is a forward to a peer replica (fwd holds it). */
  unsigned forwarding : 1;
  hub_fwd_t *fwd; /* NULL until the connection's first forward */
  /* Moving between loops (see "moving a caller"). pinned: the current
   * request came with a decision from another loop and does not move
   * again. moved_*: that decision, until the relay parses the head here. */
  unsigned pinned : 1;
  /* move_arrive is feeding the relay: a front_done meanwhile (the conn
   * went on to an agent session or another loop) leaves the freeing to it
   * (freed_late) instead of freeing the record under it. */
  unsigned arriving : 1, freed_late : 1;
  int moved_kind; /* 0 none, MOVE_PROXY, MOVE_AGENT */
  char *moved_cluster, *moved_target;
  char *moved_fields; /* the hub's fields for the member, or NULL */
  uint64_t moved_started_ns; /* when its head was complete, there */
  uint64_t moved_id;         /* its request ID, there */
  /* Waiting for its queued writes to drain before moving to move_to. */
  kp_hub_t *move_to;
} hub_front_t;

/* Forwarding to a peer replica (hub_forward.c). */
#define FWD_DEADLINE_MS 5000 /* resolve + connect + TLS handshake */
#define FWD_MAX_IDLE 64
#define FWD_IDLE_MS 10000
#define FWD_DEFAULT_SERVER_NAME "kopilot-hub-peer"

/* ---- sessions and placement (hub_sessions.c) */
void kp__hub_maybe_done(kp_hub_t *hub);
hub_cluster_t *kp__hub_cluster_find(kp_hub_t *hub, const char *id, int create);
void kp__hub_place_count(kp_hub_t *hub, const char *id, int delta);
kp_hub_t *kp__hub_other_loop(kp_hub_t *hub, const char *cluster, int agent);
extern const kp__sess_owner_t kp__hub_sess_owner;
kp__sess_t *kp__hub_pick_session(hub_cluster_t *c, kp__sess_t *skip);

/* ---- moving a caller to another loop (hub_move.c) */
int kp__hub_move_front(hub_front_t *f, kp_hub_t *to, int kind,
                       const char *cluster, const char *target,
                       const char *fields);
void kp__hub_move_when_drained(hub_front_t *f);

/* ---- listening and handshakes (hub_listen.c) */
void kp__hub_handshake_over(hub_front_t *f);
void kp__hub_start(void *arg);

/* ---- the front and its answers (hub_front.c) */
void kp__hub_front_free(hub_front_t *f);
void kp__hub_set_cluster(hub_req_t *q, const char *cluster);
extern const kp__relay_router_t kp__hub_front_router;
extern const kp__conn_cbs_t kp__hub_front_cbs;
void kp__hub_status_json(hub_front_t *f, int status, const char *reason,
                         const char *msg);
void kp__hub_proxied_local(hub_req_t *q, const char *key, int status);
void kp__hub_report_unrun(kp_hub_t *hub, const char *key, uint64_t id,
                          uint64_t started_ns);
void kp__hub_do_proxy(hub_front_t *f, const char *cluster, const char *target,
                      const char *fields);
/* Refuses a request whose rebuilt head the next hop could not read (431,
 * kp__http_head_fits), reported on `key`. */
void kp__hub_head_too_big(hub_front_t *f, const char *key);
void kp__hub_do_accept_agent(hub_front_t *f, const char *cluster);

/* ---- forwarding to a peer replica (hub_forward.c) */
extern const kp__backpool_hooks_t kp__hub_fwd_hooks;
int kp__hub_front_retry(kp__relay_t *r, int err);
int kp__hub_front_describe_failure(kp__relay_t *r, int err, char *buf,
                                   size_t len);
void kp__hub_do_forward(hub_front_t *f, const char *cluster, const char *host,
                        int port, const char *hop, const char *fields);

#endif
