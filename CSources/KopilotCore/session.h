/* session.h - a mux session carried on a TLS connection after the
 * WebSocket upgrade, framed in binary messages or raw (private). Shared by
 * the hub (server side) and the agent (client side). */
#ifndef KOPILOT_SESSION_H
#define KOPILOT_SESSION_H

#include "conn.h"
#include "relay.h"

extern const kp__ep_ops_t kp__stream_ep_ops;

typedef struct kp__sess kp__sess_t;

typedef struct kp__sess_owner {
  /* The peer opened a stream (agent side: a request from the hub). */
  void (*on_stream)(kp__sess_t *s, kp_mux_stream_t *st);
  /* The session ended; it is freed after this returns. */
  void (*on_close)(kp__sess_t *s, int status);
} kp__sess_owner_t;

struct kp__sess {
  kp__conn_t *conn;
  kp_mux_t *mux;
  uv_timer_t timer; /* mux keepalive clock */
  const kp__sess_owner_t *owner;
  void *ud;
  int framed;
  int is_server;
  kp_ws_decoder_t ws;
  int closing, timer_open, mux_closed;
  /* Opening a stream failed for good (GoAway sent or received, or the
   * mux closed): the session drains what it carries and takes nothing
   * new, so nobody picks it again. */
  int refusing;
  /* The peer's control frames made us queue more than this (see
   * session.c); reading is off until the queue drains. */
  uint64_t ctrl_limit;
  int stalled;
  int close_status;
  uint64_t id;
  struct kp__sess *next, *prev; /* owner's list */
  char *cluster; /* the hub's: which cluster (owned by the hub) */
};

/* Starts a session on a ready conn; the conn's callbacks become the
 * session's. rest: bytes already read past the 101 (fed first). */
int kp__sess_start(kp__sess_t **out, kp__conn_t *conn, int is_server,
                   int framed, uint32_t window, uint64_t keepalive_ms,
                   const kp__sess_owner_t *owner, void *ud,
                   const uint8_t *rest, size_t rest_len);
void kp__sess_close(kp__sess_t *s, int status);

/* Stream callbacks: a stream's user data is the relay it belongs to (or
 * NULL once the relay let it go). */

#endif
