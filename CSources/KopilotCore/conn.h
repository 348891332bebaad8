/* conn.h - a TCP connection with TLS on the loop (private).
 *
 * Reads land as ciphertext in the loop's shared read buffer, are fed to the
 * TLS engine at once, and come out as plaintext in a pooled chunk handed to
 * on_read; so an idle connection holds no read buffer. Writes are encrypted
 * at once into pooled chunks and queued with uv_write; on_written reports the
 * plaintext bytes whose ciphertext the kernel took, which is what flow
 * control upstream waits for. */
#ifndef KOPILOT_CONN_H
#define KOPILOT_CONN_H

#include "loop_internal.h"

typedef struct kp__conn kp__conn_t;

/* Conns that close together: a hub shard's, when it stops. A conn joins at
 * most one set (kp__conn_join) and leaves it when it starts closing, so
 * the set holds exactly the live conns that joined it. */
typedef struct kp__conn_set {
  kp__conn_t *head;
} kp__conn_set_t;

typedef struct kp__conn_cbs {
  /* TLS handshake done (status 0) or failed; on failure on_close follows. */
  void (*on_ready)(kp__conn_t *c, int status);
  /* Plaintext; data points into chunk (take a reference to keep it). */
  void (*on_read)(kp__conn_t *c, const uint8_t *data, size_t len,
                  kp_chunk_t *chunk);
  /* The peer finished sending (close_notify or TCP EOF). */
  void (*on_eof)(kp__conn_t *c);
  /* The kernel took the ciphertext of n plaintext bytes. */
  void (*on_written)(kp__conn_t *c, size_t n);
  /* Closed; the conn is freed after this returns. */
  void (*on_close)(kp__conn_t *c, int status);
  /* Optional: the last queued write was taken by the kernel (nothing is
   * pending any more), whether or not it carried plaintext (a handshake
   * flight, a session ticket). */
  void (*on_drained)(kp__conn_t *c);
  /* Optional: the deadline set with kp__conn_set_timeout passed. Without
   * it the conn closes with KP_ETIMEDOUT. */
  void (*on_timeout)(kp__conn_t *c);
} kp__conn_cbs_t;

struct kp__conn {
  uv_tcp_t tcp;
  uv_timer_t timer; /* handshake and request-head deadlines */
  kp_loop_t *loop;
  struct kp_tls *tls;
  kp_chunk_t *rchunk; /* the read buffer between alloc and read callbacks */
  const kp__conn_cbs_t *cbs;
  void *ud;
  /* What writes hold until the kernel takes them: the plaintext corked
   * this loop turn, then the chunks of its records (see conn_flush). */
  uint64_t pending;
  uint64_t timeout_ms; /* current deadline length (0: none) */
  unsigned ready : 1, reading : 1, eof : 1, closing : 1, shut : 1,
      is_client : 1,
      resolving : 1; /* a dial's getaddrinfo is running: it frees a closed conn */
  int close_status;
  int handles_open;
  kp__deferred_t flush; /* queued: ciphertext waits for the iteration's end */
  size_t unflushed;     /* plaintext bytes in that ciphertext */
  char peer[64]; /* "ip:port" */
  kp__conn_set_t *set; /* the set it joined, until it starts closing */
  kp__conn_t *set_prev, *set_next;
};

/* Wraps an accepted TCP socket from `server`; the TLS handshake starts at
 * once and on_ready follows. */
int kp__conn_accept(kp__conn_t **out, kp_loop_t *loop, uv_stream_t *server,
                    struct kp_tls_ctx *ctx, const kp__conn_cbs_t *cbs,
                    void *ud);
/* Connects to addr (already resolved) and runs the TLS handshake with
 * server_name for SNI and verification; on_ready follows. */
int kp__conn_connect(kp__conn_t **out, kp_loop_t *loop,
                     const struct sockaddr *addr, struct kp_tls_ctx *ctx,
                     const char *server_name, const kp__conn_cbs_t *cbs,
                     void *ud);
/* Encrypts and queues data (copied by the encryption). */
int kp__conn_write(kp__conn_t *c, const uint8_t *data, size_t len);
/* The same for several pieces, coalesced into full TLS records. */
int kp__conn_writev(kp__conn_t *c, const uint8_t *const *bufs,
                    const size_t *lens, size_t n);
void kp__conn_read(kp__conn_t *c, int on);
/* Sends close_notify after queued data, then shuts the TCP write side. */
void kp__conn_shutdown(kp__conn_t *c);
/* Closes now; on_close(status) follows from the loop. Idempotent. */
void kp__conn_close(kp__conn_t *c, int status);
/* Puts a live conn in `set` (it leaves any other first). */
void kp__conn_join(kp__conn_t *c, kp__conn_set_t *set);
/* Closes every conn of the set with `status`; the set is empty after. */
void kp__conn_close_all(kp__conn_set_t *set, int status);
/* Arms a deadline: ms from now the conn closes with KP_ETIMEDOUT unless the
 * deadline is moved or cleared (0) first. Reads do not move it: a peer that
 * trickles bytes (slowloris) still runs out of time. */
void kp__conn_set_timeout(kp__conn_t *c, uint64_t ms);
const char *kp__conn_alpn(kp__conn_t *c, size_t *len);

/* Moving a conn to another loop (see conn.c). movable: ready, open, not at
 * EOF, and nothing queued to write. detach: takes a dup of the socket and
 * the TLS engine out of a movable conn and closes the conn (on_close(0)
 * follows; the engine is not freed); KP_EINVAL when not movable. adopt, on
 * the other loop's thread: wraps them in a new conn that is ready and not
 * reading (kp__conn_read turns it on and first delivers plaintext the
 * engine holds). On failure adopt has taken neither fd nor engine. */
int kp__conn_movable(const kp__conn_t *c);
int kp__conn_detach(kp__conn_t *c, uv_os_sock_t *fd, struct kp_tls **tls);
int kp__conn_adopt(kp__conn_t **out, kp_loop_t *loop, uv_os_sock_t fd,
                   struct kp_tls *tls, const kp__conn_cbs_t *cbs, void *ud);

/* Resolves host (a name or an IP literal) and connects as kp__conn_connect
 * does. Resolution failures come through on_ready like connect failures. */
int kp__conn_dial(kp__conn_t **out, kp_loop_t *loop, const char *host,
                  int port, struct kp_tls_ctx *ctx, const char *server_name,
                  const kp__conn_cbs_t *cbs, void *ud);

/* The endpoint view of a conn, for the relay (ep.h = the conn;
 * conn_ep.c). */
struct kp__ep_ops;
extern const struct kp__ep_ops kp__conn_ep_ops;

#endif
