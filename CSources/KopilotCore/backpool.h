/* backpool.h - back connections and their keep-alive pool (private).
 *
 * Both the agent (its conns to the member's API server) and the hub (its
 * conns to peer replicas) relay a request to a back end over a TLS conn
 * they dial themselves. A cold request costs a TCP and a TLS handshake; an
 * exchange that ended at a request boundary (the relay says REUSABLE)
 * leaves its conn in this pool for the next request with the same key
 * instead. The pool is a LIFO list: the most recently used conn is taken
 * first, so a light load keeps reusing a few warm conns and the rest age
 * out by their idle deadline (the conn's own timer, so no pool-wide timer
 * to manage). Idle conns keep reading: a server that closes one (its idle
 * timeout, a restart) is seen at once and the conn leaves the pool. One
 * that closed as a request crossed it (EOF or reset before a response
 * byte) is retried once on a new conn when the request may be sent twice
 * (kp__backreq_retry).
 *
 * The owner (hub.c, agent.c) embeds a kp__backpool_t in its own record and
 * a kp__backreq_t in each front's; everything runs on the loop thread. */
#ifndef KOPILOT_BACKPOOL_H
#define KOPILOT_BACKPOOL_H

#include "conn.h"
#include "relay.h"

typedef struct kp__backpool kp__backpool_t;
typedef struct kp__backreq kp__backreq_t;

/* One back conn: carrying a request, idle in the pool, or orphaned. */
typedef struct kp__back {
  kp__backpool_t *pool;
  const struct kp__backpool_hooks *hooks; /* the pool's (static) */
  kp__conn_t *conn;
  kp__backreq_t *req; /* the request it carries; NULL when idle or orphaned */
  struct kp__back *prev, *next; /* the pool's idle list, while pooled */
  unsigned attached : 1, pooled : 1;
  char key[]; /* which requests may take it from the pool */
} kp__back_t;

/* What a request needs of the pool; lives in the owner's front record. The
 * owner sets head, key and idempotent before kp__backreq_start. */
struct kp__backreq {
  kp__relay_t *relay;
  kp__back_t *back;  /* its conn while dialing or attached */
  uint8_t *head;     /* the head to send (owned), kept for a second attempt */
  size_t head_len;
  const char *key;   /* borrowed: must outlive the request */
  unsigned idempotent : 1, /* the method may be sent twice */
      reused : 1,          /* the current attempt's conn came from the pool */
      retried : 1;         /* the request was sent again once already */
};

typedef struct kp__backpool_hooks {
  /* Starts b's conn for q: kp__conn_dial(&b->conn, ..., &kp__back_conn_cbs,
   * b) with the owner's host, port and TLS context. Returns an error (and
   * fires nothing) when it cannot start. */
  int (*dial)(kp__backpool_t *p, kp__backreq_t *q, kp__back_t *b);
  /* Optional: q's conn failed its handshake or closed (c, still valid, has
   * the TLS error); called before fail or the relay hears of it. */
  void (*note)(kp__backreq_t *q, kp__conn_t *c, int status);
  /* No response can come for q (the conn failed or closed before the
   * request went out; status is never 0): answer the caller. */
  void (*fail)(kp__backreq_t *q, int status);
  /* Optional: a back conn is gone, after its own clean-up. */
  void (*closed)(kp__backpool_t *p);
  /* Optional: the idle list ran empty after kp__backpool_wait_empty. */
  void (*drained)(kp__backpool_t *p);
} kp__backpool_hooks_t;

struct kp__backpool {
  const kp__backpool_hooks_t *hooks;
  void *ud; /* the owner */
  kp__back_t *idle; /* most recently used first */
  uint32_t idle_count, max_idle;
  uint64_t idle_ms;
  unsigned closed : 1,  /* keeps no conn any more (kp__backpool_close) */
      waiting : 1;      /* kp__backpool_wait_empty: `drained` is owed */
};

/* The conn callbacks of every back conn (tells a back conn from others). */
extern const kp__conn_cbs_t kp__back_conn_cbs;

void kp__backpool_init(kp__backpool_t *p, const kp__backpool_hooks_t *hooks,
                       void *ud, uint32_t max_idle, uint64_t idle_ms);
/* Keeps no conn from now on and closes the idle ones; each leaves the list
 * in its on_close. */
void kp__backpool_close(kp__backpool_t *p);
/* Closes the pool; returns 1 when the idle list is empty already, else 0
 * and `drained` fires once the last idle conn is gone. */
int kp__backpool_wait_empty(kp__backpool_t *p);

/* GET, HEAD, OPTIONS and DELETE: what q->idempotent should say. */
int kp__backpool_idempotent(const kp_http_head_t *h);

/* Sends q->head for relay r on an idle conn with q->key, or dials a new one
 * that attaches when its handshake is done. Returns an error (and fires
 * nothing) when no conn could be had. */
int kp__backreq_start(kp__backpool_t *p, kp__backreq_t *q, kp__relay_t *r);
/* The relay's release_back for a back conn: a REUSABLE one goes to the
 * pool, any other closes. */
void kp__backreq_release(kp__backreq_t *q, kp__ep_t back,
                         kp__relay_back_end_t how);
/* The relay's retry: q's pooled conn died under a request it had not
 * answered. Dials once more, only for a method that may be sent twice;
 * returns 1 when a new conn is on its way. The owner checks first that it
 * is not shutting down. */
int kp__backreq_retry(kp__backpool_t *p, kp__backreq_t *q);
/* The relay is finishing: a conn still dialing for it goes away. */
void kp__backreq_orphan(kp__backreq_t *q);
/* Frees the head, wiped first (the agent's holds its bearer token). */
void kp__backreq_clear_head(kp__backreq_t *q);

#endif
