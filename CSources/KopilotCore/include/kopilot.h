/*
 * kopilot.h - the public interface of Kopilot's C core.
 *
 * The core owns the hot path: buffers, the HTTP/1.1 framing, the WebSocket
 * codec (RFC 6455), the yamux-compatible mux codec and sessions, TLS and the
 * libuv loop. Codecs do no I/O: they take bytes and say "consumed N",
 * "need more" (KP_EAGAIN) or "protocol error". Sessions do no I/O either:
 * they emit bytes through a send callback and are fed bytes by their owner,
 * so tests can wire two of them back to back in memory.
 *
 * Conventions
 *  - Errors are negative ints from KP_ERRNO_MAP (or negative libuv/errno
 *    codes passed through); kp_strerror()/kp_err_name() describe any of them.
 *  - Pointers are "borrowed" (valid only during the call or callback) unless
 *    a comment says "owned".
 *  - A function that returns an error never fires its callback.
 */
#ifndef KOPILOT_H
#define KOPILOT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ */
/* Errors                                                              */
/* ------------------------------------------------------------------ */

/* Codes live at -5000 and below, clear of errno values and of libuv's
 * UV__* codes (which stop at -4095). */
#define KP_ERRNO_MAP(X)                                                       \
  X(EAGAIN, -5001, "need more input or would block")                         \
  X(EINVAL, -5002, "invalid argument")                                       \
  X(ENOMEM, -5003, "out of memory")                                          \
  X(EPROTO, -5004, "protocol error")                                         \
  X(EHEADTOOBIG, -5005, "message head too large")                            \
  X(EBADMSG, -5006, "malformed HTTP message")                                \
  X(ECLOSED, -5007, "closed")                                                \
  X(ERESET, -5008, "stream reset by peer")                                   \
  X(ETIMEDOUT, -5009, "timed out")                                           \
  X(EWINDOW, -5010, "flow-control window exceeded")                          \
  X(EREFUSED, -5011, "stream refused")                                       \
  X(EGOAWAY, -5012, "session is going away")                                 \
  X(ETLS, -5013, "TLS error")                                                \
  X(ECERT, -5014, "certificate verification failed")                         \
  X(ETOOMANY, -5015, "too many streams")                                     \
  X(EUNSUPPORTED, -5016, "unsupported")                                      \
  X(EMSGSIZE, -5017, "message too large")                                    \
  X(EIO, -5018, "I/O error")

typedef enum kp_errno {
#define KP__ERR_ENUM(name, code, msg) KP_##name = code,
  KP_ERRNO_MAP(KP__ERR_ENUM)
#undef KP__ERR_ENUM
  KP_OK = 0
} kp_errno_t;

/* Static strings; never NULL. Unknown codes get "unknown error". Codes that
 * are not ours are passed to libuv's uv_strerror/uv_err_name. */
const char *kp_strerror(int err);
const char *kp_err_name(int err);

/* ------------------------------------------------------------------ */
/* Buffers: pooled, reference-counted chunks                           */
/* ------------------------------------------------------------------ */

/* A chunk is a block of bytes with a reference count. Reads land in chunks;
 * payloads handed up (WebSocket, mux data) point into them, so a consumer
 * that needs the bytes later takes a reference instead of copying.
 * Chunks of the standard size come from a per-thread free list; the pool
 * keeps at most KP_CHUNK_POOL_MAX idle chunks per thread. */
#define KP_CHUNK_SIZE (64 * 1024)
#define KP_CHUNK_POOL_MAX 64

typedef struct kp_chunk kp_chunk_t;

/* Returns an owned chunk (refcount 1) with at least `size` bytes of capacity
 * (KP_CHUNK_SIZE when size is 0), or NULL when out of memory. */
kp_chunk_t *kp_chunk_new(size_t size);
void kp_chunk_ref(kp_chunk_t *c);
/* Drops one reference; the last one returns the chunk to the pool. Any
 * thread may drop a reference; the chunk goes to that thread's pool. */
void kp_chunk_unref(kp_chunk_t *c);
uint8_t *kp_chunk_data(kp_chunk_t *c);
size_t kp_chunk_capacity(const kp_chunk_t *c);
/* Chunks currently allocated (in use or pooled) by the whole process. */
size_t kp_chunk_live_count(void);

/* The process-wide memory budget (bytes; 0, the default: none). What it
 * covers: the receive window that mux streams earn beyond their starting
 * window (kp_mux_config_t.window_start), the memory a stream's reader may
 * leave waiting in the process. A stream whose window would pass the
 * budget does not grow; it keeps flowing at the window it has. Any
 * thread. */
void kp_memory_budget_set(uint64_t bytes);
/* The budget's limit and what is drawn from it now. */
void kp_memory_budget_get(uint64_t *limit, uint64_t *used);

/* A slice: a range of a chunk, holding one reference to it. */
typedef struct kp_slice {
  kp_chunk_t *chunk; /* owned reference, or NULL for a borrowed range */
  uint8_t *base;
  size_t len;
} kp_slice_t;

/* ------------------------------------------------------------------ */
/* Loop: a libuv loop on its own thread                                */
/* ------------------------------------------------------------------ */

typedef struct kp_loop kp_loop_t;

/* Creates a loop and starts its thread. Returns 0, KP_ENOMEM or a libuv
 * error. Sets SIGPIPE to be ignored, process-wide: a peer that hangs up must
 * cost one connection (EPIPE), not the process. */
int kp_loop_new(kp_loop_t **out);
/* Runs fn(arg) on the loop thread, after work posted before it. Callable
 * from any thread, including the loop's own. Returns KP_ECLOSED once the
 * loop is being freed (fn will not run). */
int kp_loop_post(kp_loop_t *l, void (*fn)(void *), void *arg);
/* 1 when called on the loop's thread. */
int kp_loop_is_current(kp_loop_t *l);
/* The loop's cached clock in ms (libuv's uv_now); loop thread only. */
uint64_t kp_loop_now(kp_loop_t *l);
/* One-shot timers on the loop. */
typedef struct kp_timer kp_timer_t;
/* Runs fn(arg) on the loop thread about `ms` from now. Callable from any
 * thread; *out (may be NULL) gets a handle for kp_timer_cancel, valid until
 * fn has run or the cancel completed. Returns 0, KP_ENOMEM or KP_ECLOSED. */
int kp_timer_start(kp_loop_t *l, uint64_t ms, void (*fn)(void *), void *arg,
                   kp_timer_t **out);
/* Cancels a timer that has not fired; fn will not run. Loop thread only
 * (from a posted function or a callback). Returns 0, or KP_ECLOSED when the
 * timer already fired. */
int kp_timer_cancel(kp_timer_t *t);
/* Runs work already posted, closes what is left and joins the thread.
 * Free the hubs and agents running on it first. Not from the loop thread. */
void kp_loop_free(kp_loop_t *l);

/* How many loops to run by default: the CPUs this process may use. That is
 * the affinity mask (sched_getaffinity; taskset, cpusets), capped by the
 * CPU quota of this process's cgroup and of each cgroup above it (v2
 * cpu.max, v1 cpu.cfs_quota_us / cpu.cfs_period_us), rounded up: a pod with
 * `limits.cpu: 4` gets 4, `1500m` gets 2. Requests, shares and weights do
 * not cap it (they only weigh CPUs under contention). At least 1. */
int kp_cpus_available(void);
/* The quota read from one cgroup folder, as CPUs rounded up; 0 when the
 * folder sets none ("max", -1, no file). Exposed for tests. */
int kp_cgroup_cpu_quota(const char *dir);

/* ------------------------------------------------------------------ */
/* Hub: the caller-facing listener, agent sessions, proxying           */
/* ------------------------------------------------------------------ */

struct kp_http_head;
typedef struct kp_hub kp_hub_t;
/* A caller's request waiting for the policy's answer. */
typedef struct kp_hub_request kp_hub_request_t;

typedef struct kp_hub_config {
  const char *bind_host;   /* e.g. "0.0.0.0" or "127.0.0.1" */
  int port;                /* 0: any free port (read it with kp_hub_port) */
  const char *cert_file;   /* PEM serving certificate (chain) */
  const char *key_file;    /* PEM private key */
  uint32_t mux_window;     /* receive window per stream; 0: 256 KiB */
  uint64_t keepalive_ms;   /* mux pings; 0: 30 s */
  size_t max_head;         /* request head limit; 0: 64 KiB */
  /* A caller must send a complete request head within this time of the
   * connection being ready or the previous response ending (slowloris,
   * idle keep-alive connections); 0: 30 s. */
  uint64_t head_timeout_ms;
  /* Peer forwarding between hub replicas (kp_hub_request_forward), over
   * mutual TLS. peer_cert_file/peer_key_file: PEM certificate (chain) and
   * key, presented both by the peer listener and as the client certificate
   * when dialing a peer; peer_ca_file: PEM trust anchors that both sides'
   * certificates must chain to. NULL peer_cert_file: no peer listener and
   * forwarding answers 502. */
  const char *peer_cert_file;
  const char *peer_key_file;
  const char *peer_ca_file;
  /* The name a dialed peer's certificate must carry (a DNS SAN, or an IP
   * SAN when it is an IP literal); also sent as SNI. NULL: the default,
   * "kopilot-hub-peer". */
  const char *peer_server_name;
  /* The peer listener: NULL peer_bind_host = bind_host. peer_port < 0: no
   * peer listener (dialing peers still works); 0: any free port (read it
   * with kp_hub_peer_port); > 0: that port. Its TLS requires a client
   * certificate chained to peer_ca_file. Requests arriving on it reach
   * on_request like any other, flagged (kp_hub_request_via_peer). NB: a
   * zeroed config has peer_port 0 but no peer_cert_file, so no listener. */
  const char *peer_bind_host;
  int peer_port;
} kp_hub_config_t;

typedef struct kp_hub_callbacks {
  /* A request head from a caller, on the loop thread. Answer it exactly once
   * with kp_hub_request_proxy / _respond / _accept_agent / _forward, from
   * here or later from any thread. head and peer are borrowed for this
   * call. */
  void (*on_request)(kp_hub_t *hub, kp_hub_request_t *req,
                     const struct kp_http_head *head, const char *peer,
                     void *ud);
  /* An agent session of `cluster` came up (up = 1) or went down (up = 0,
   * status says why). */
  void (*on_session)(kp_hub_t *hub, const char *cluster, uint64_t session,
                     int up, int status, void *ud);
  /* A proxied or forwarded request ended (optional; for metrics, access
   * and audit logs): its kp_hub_request_id, the session that carried it
   * (0: none was live, or a forward),
   * the member's status (0 when the request went out and no response head
   * came back: the tunnel or the peer connection broke; an answer given
   * before anything went out reports its own status: 503 no session, 502
   * peer unreachable, 508 loop, 500 bad forward),
   * bytes each way including heads, and the time from the request head to
   * the end of the exchange. Loop thread; cluster is borrowed. */
  void (*on_proxied)(kp_hub_t *hub, uint64_t request, const char *cluster,
                     uint64_t session,
                     int status, uint64_t bytes_up, uint64_t bytes_down,
                     uint64_t duration_us, void *ud);
  /* Optional. The final response head of a proxied or forwarded request
   * came back (status; 101 for an upgrade), before it goes on to the
   * caller: for audit logs that note when a long-running response (a
   * watch, an exec) started. on_proxied still follows when it ends. Loop
   * thread; do not answer or free anything from here. */
  void (*on_response)(kp_hub_t *hub, uint64_t request, int status, void *ud);
} kp_hub_callbacks_t;

/* A live agent session, as kp_hub_list_sessions reports it. */
typedef struct kp_hub_session_info {
  const char *cluster; /* borrowed for the callback */
  uint64_t session;    /* the id on_session reported */
  uint32_t streams;    /* open mux streams (requests in flight) */
  int framed;          /* 1: kopilot.v2 WebSocket messages; 0: raw */
  const char *peer;    /* the agent's address, "ip:port" */
  unsigned loop;       /* the loop that holds it, 0 to loops - 1 */
} kp_hub_session_info_t;

/* Calls cb for every live session, on the loop thread, and returns when
 * done (0) or an error. Not from the loop thread. */
int kp_hub_list_sessions(kp_hub_t *hub,
                         void (*cb)(const kp_hub_session_info_t *info,
                                    void *arg),
                         void *arg);

#define KP_HUB_MAX_LOOPS 1024

/* Binds and starts serving on `nloops` loops (1 to KP_HUB_MAX_LOOPS), one
 * shard each: with more than one, every loop listens on the same port with
 * SO_REUSEPORT and the kernel spreads connections over them. Each loop owns
 * its connections and sessions. A request whose cluster has no session on
 * its loop moves, with its connection, to a loop that has one, and agent
 * sessions of a cluster are spread over the loops. Callbacks run on the
 * loop of the connection and get that loop's shard as `hub` (use ud to find
 * the owner; the handle returned here is the one the other calls take).
 * Returns 0, or an error with a message in err (certificate, bind).
 * Callable from any thread but the loops'. */
int kp_hub_new_on(kp_hub_t **out, kp_loop_t *const *loops, size_t nloops,
                  const struct kp_hub_config *cfg,
                  const struct kp_hub_callbacks *cbs, void *ud, char *err,
                  size_t errlen);
/* Loops the hub runs on; connections accepted on one loop's caller
 * listener (agents and callers); connections moved to another loop. Any
 * thread; for tests and metrics. */
unsigned kp_hub_loop_count(const kp_hub_t *hub);
uint64_t kp_hub_accepted(const kp_hub_t *hub, unsigned loop);
uint64_t kp_hub_moved(const kp_hub_t *hub);

/* kp_hub_new_on with one loop. */
int kp_hub_new(kp_hub_t **out, kp_loop_t *loop, const kp_hub_config_t *cfg,
               const kp_hub_callbacks_t *cbs, void *ud, char *err,
               size_t errlen);
int kp_hub_port(const kp_hub_t *hub);
/* The peer listener's port, 0 when there is none. */
int kp_hub_peer_port(const kp_hub_t *hub);
/* Stops listening, closes every connection and session, and frees. Not from
 * the loop thread. */
void kp_hub_free(kp_hub_t *hub);
/* Reads the serving certificate and key again (and, when the hub has a peer
 * listener and peer_cert_file is given, the peer certificate, key and CA):
 * connections made from now on use them, those already open keep theirs.
 * For certificates renewed in place (cert-manager). On any error nothing
 * changes and err says why. Not from the loop thread; not after
 * kp_hub_free. */
int kp_hub_reload_tls(kp_hub_t *hub, const char *cert_file,
                      const char *key_file, const char *peer_cert_file,
                      const char *peer_key_file, const char *peer_ca_file,
                      char *err, size_t errlen);
/* Closes every session of `cluster` (token revoked, cluster removed). */
int kp_hub_drop_cluster(kp_hub_t *hub, const char *cluster);

/* The answers. Each returns 0; or, called from another thread than the
 * request's loop: KP_ENOMEM when the answer could not be copied for the
 * loop (the request then fails there: reported to on_proxied as never run
 * when it was a proxy or a forward, and the caller's connection closed, so
 * nobody is left waiting), or KP_ECLOSED when the hub is stopping. */

/* Forwards the request to a live session of `cluster` (the one with the
 * fewest open streams), with `target` as the new request target (borrowed;
 * copied), the caller's Authorization and identity fields
 * (kp_http_is_identity_header) removed, X-Forwarded-For/-Proto set and the
 * framing written anew (kp_http_build_request). No session: 503 naming the
 * cluster. */
int kp_hub_request_proxy(kp_hub_request_t *req, const char *cluster,
                         const char *target);
/* kp_hub_request_proxy, with `fields` (NUL-terminated "Name: value\r\n"
 * lines; borrowed, copied) added to the head the member gets: the identity
 * the hub authenticated, as Impersonate-* fields, and the request's
 * Audit-ID (a caller's own Audit-ID is never passed on). NULL or "": none.
 * Returns KP_EINVAL, and answers nothing, when kp_http_check_hub_fields
 * refuses them; otherwise as kp_hub_request_proxy. */
int kp_hub_request_proxy_as(kp_hub_request_t *req, const char *cluster,
                            const char *target, const char *fields);
/* Answers locally. body is copied; content_type NULL = application/json. */
int kp_hub_request_respond(kp_hub_request_t *req, int status,
                           const char *content_type, const char *body,
                           size_t body_len);
/* kp_hub_request_respond with `fields` (NUL-terminated "Name: value\r\n"
 * lines that kp_http_check_hub_fields accepts, such as the request's
 * Audit-Id; borrowed, copied) in the response head. KP_EINVAL, and no
 * answer, when the check refuses them. */
int kp_hub_request_respond_as(kp_hub_request_t *req, int status,
                              const char *content_type, const char *body,
                              size_t body_len, const char *fields);
/* Upgrades the connection to an agent session of `cluster`: WebSocket
 * handshake, framed carriage if the agent asked for kopilot.v2, raw mux
 * after the 101 otherwise. Not a valid WebSocket request: 400. */
int kp_hub_request_accept_agent(kp_hub_request_t *req, const char *cluster);
/* Forwards the request to another hub replica's peer listener at host:port
 * (host: a name or an IP literal; borrowed, copied): TCP, then TLS with
 * the peer certificate as client certificate, the server's certificate
 * checked against peer_ca_file and peer_server_name; connect and handshake
 * must finish within 5 s. The request head goes out as the caller sent it
 * (same target, the caller's Authorization kept: the peer authenticates and
 * authorizes the request again on its own merits, since mutual TLS vouches
 * for the connection, not for what a caller put on it) except: identity
 * fields removed and framing written anew, X-Forwarded-For/-Proto set as
 * kp_hub_request_proxy does, and `Kopilot-Forwarded-By: <hop>` added (any
 * the caller sent is dropped; hop: printable ASCII, borrowed, copied).
 * Body, response, streaming and upgrades are relayed as for a proxied
 * request, and the caller's connection is kept alive afterwards. Idle peer
 * connections are kept a few seconds for the next forward to the same
 * host:port. Errors, as Kubernetes Status: 502 "replica <host:port>
 * unreachable: <reason>" when no response head came back; 508 when the
 * request itself came from a peer (a forwarding loop); 500 for a bad hop.
 * on_proxied fires once per forward, with `cluster` (the key the owner
 * counted the request under, borrowed, copied; at most 317 bytes, longer
 * is reported as "") and session 0. */
int kp_hub_request_forward(kp_hub_request_t *req, const char *cluster,
                           const char *host, int port, const char *hop);
/* kp_hub_request_forward with `fields` (as for kp_hub_request_proxy_as, at
 * most 1 KiB; the request's Audit-ID, which the peer adopts) added to the
 * head; the caller's own Audit-ID is never passed on. KP_EINVAL, and no
 * answer, when they are refused. */
int kp_hub_request_forward_as(kp_hub_request_t *req, const char *cluster,
                              const char *host, int port, const char *hop,
                              const char *fields);
/* 1 when the request arrived on the peer listener (another replica
 * forwarded it: authorize it as any other, never forward it again), else 0. Any thread,
 * until the request is answered. */
int kp_hub_request_via_peer(const kp_hub_request_t *req);
/* The request's ID, unique in this hub (all loops) and never 0; the one
 * on_proxied reports it under, so an owner can match an answer it gave to
 * how the exchange ended. Kept when the request moves to another loop. Any
 * thread, until the request is answered. */
uint64_t kp_hub_request_id(const kp_hub_request_t *req);

/* ------------------------------------------------------------------ */
/* Agent: one session to the hub, requests forwarded upstream           */
/* ------------------------------------------------------------------ */

typedef struct kp_agent kp_agent_t;

typedef struct kp_agent_config {
  const char *hub_host;     /* name or IP of the hub */
  int hub_port;
  const char *hub_path;     /* e.g. "/connect" (the token: hub_token) */
  const char *hub_ca_file;  /* PEM; NULL: the system's trust store */
  int hub_insecure;         /* skip hub verification (explicit opt-in) */
  int framed;               /* 1: kopilot.v2 WebSocket messages; 0: raw */
  const char *upstream_host;
  int upstream_port;
  const char *upstream_ca_file; /* PEM; NULL: system store */
  const char *upstream_ca_pem;  /* PEM in memory, NUL-terminated (instead) */
  /* A client certificate for the API server (kubeconfig users), PEM in
   * memory, NUL-terminated; NULL: none. */
  const char *upstream_cert_pem;
  const char *upstream_key_pem;
  int upstream_insecure;
  uint32_t mux_window;      /* 0: 256 KiB */
  uint64_t keepalive_ms;    /* 0: 30 s */
  /* Upstream keep-alive pool: at most this many idle connections to the
   * API server are kept for the next requests (0: 256), each closed after
   * upstream_idle_ms without a request (0: 60 s). */
  uint32_t upstream_max_idle;
  uint64_t upstream_idle_ms;
  /* The cluster's agent token, sent as "Authorization: Bearer <token>" on
   * the /connect upgrade (copied; NULL or "": none sent). Never put it in
   * hub_path: a URL's query is what proxies and access logs keep. */
  const char *hub_token;
} kp_agent_config_t;

typedef struct kp_agent_callbacks {
  /* The session is up (status 0) or ended (status < 0): reconnecting is
   * the caller's choice (kp_agent_connect again). Loop thread. */
  void (*on_state)(kp_agent_t *a, int up, int status, void *ud);
} kp_agent_callbacks_t;

/* Creates an agent (TLS contexts built at once; errors in err). */
int kp_agent_new(kp_agent_t **out, kp_loop_t *loop,
                 const kp_agent_config_t *cfg, const kp_agent_callbacks_t *cbs,
                 void *ud, char *err, size_t errlen);
/* Dials the hub and runs a session; any thread. */
int kp_agent_connect(kp_agent_t *a);
/* The bearer token sent upstream; any thread; copied. */
int kp_agent_set_token(kp_agent_t *a, const char *token);
/* GoAway, then close once in-flight streams finish or grace_ms passed. */
int kp_agent_shutdown(kp_agent_t *a, uint64_t grace_ms);
/* Closes everything and frees; not from the loop thread. */
void kp_agent_free(kp_agent_t *a);

/* ------------------------------------------------------------------ */
/* HTTP/1.1 framing (no I/O)                                           */
/* ------------------------------------------------------------------ */

#define KP_HTTP_MAX_HEADERS 128
#define KP_HTTP_DEFAULT_MAX_HEAD (64 * 1024)

typedef struct kp_http_header {
  const char *name; /* points into the caller's buffer; not NUL-terminated */
  size_t name_len;
  const char *value; /* leading/trailing whitespace removed */
  size_t value_len;
} kp_http_header_t;

/* Flags derived from the head while parsing. */
enum {
  KP_HTTP_F_CHUNKED = 1 << 0,          /* Transfer-Encoding ends in chunked */
  KP_HTTP_F_CONTENT_LENGTH = 1 << 1,   /* a valid Content-Length was given */
  KP_HTTP_F_KEEP_ALIVE = 1 << 2,       /* connection persists after this */
  KP_HTTP_F_UPGRADE = 1 << 3,          /* request: Connection: upgrade +
                                          Upgrade (1.1); response: 101 */
  KP_HTTP_F_EXPECT_CONTINUE = 1 << 4,  /* Expect: 100-continue (requests) */
};

typedef struct kp_http_head {
  /* request line (requests only) */
  const char *method;
  size_t method_len;
  const char *target;
  size_t target_len;
  /* status line (responses only) */
  int status;
  const char *reason;
  size_t reason_len; /* may be 0 */
  int minor_version; /* 0 or 1 */
  kp_http_header_t headers[KP_HTTP_MAX_HEADERS];
  size_t num_headers;
  int64_t content_length; /* -1 when absent or overridden by TE */
  unsigned flags;         /* KP_HTTP_F_* */
} kp_http_head_t;

/* Parses a complete request head from buf[0..len). Stateless: call again
 * with the whole buffered prefix when more bytes arrive (each call costs
 * O(len); nothing is allocated and no state is kept between calls).
 *
 * Returns the head's length in bytes (through the blank line; leading empty
 * lines before the request-line are skipped and counted, RFC 9112 2.2);
 * KP_EAGAIN when more bytes are needed (and len < max_head);
 * KP_EHEADTOOBIG when no complete head fits in max_head bytes, or it has more
 * than KP_HTTP_MAX_HEADERS field lines (send 431);
 * KP_EBADMSG when malformed (send 400 and close): bare LF or CR, obs-fold,
 * whitespace before a colon, NUL/CTL in a field, a version other than
 * HTTP/1.0 or 1.1, Content-Length that is not one non-negative int64 value,
 * Transfer-Encoding together with Content-Length or not ending in a single
 * chunked, TE on HTTP/1.0, a missing (1.1) or repeated Host;
 * KP_EINVAL for a NULL head (or NULL buf with len > 0).
 * On success all pointers in *head are borrowed from buf (valid while buf
 * is); on error *head holds no meaningful data. max_head 0 means the
 * default; it is capped at INT_MAX. */
int kp_http_parse_request(const uint8_t *buf, size_t len, size_t max_head,
                          kp_http_head_t *head);
/* The same for a response head (status line instead of request line; status
 * 100-999, empty reason allowed). In a response Transfer-Encoding overrides
 * Content-Length (content_length -1); a response whose TE does not end in
 * chunked, or that carried both, or TE on 1.0, loses KP_HTTP_F_KEEP_ALIVE.
 * A 1xx other than 101 is interim: parse the next head after it. */
int kp_http_parse_response(const uint8_t *buf, size_t len, size_t max_head,
                           kp_http_head_t *head);

/* Case-insensitive lookup of the first header named `name` (a C string);
 * returns a pointer into *head (borrowed), or NULL if none. */
const kp_http_header_t *kp_http_find_header(const kp_http_head_t *head,
                                            const char *name);

/* Is name[0..len) a field a Kubernetes API server (or an authenticating
 * proxy in front of one) takes as the caller's identity? Impersonate-*
 * (user impersonation), X-Remote-* (kube-apiserver's request-header
 * authentication defaults) and the X-Forwarded-User/-Groups/-Email family
 * of auth proxies; case-insensitive. A hub removes every such field a
 * caller sends: the only identity a member may see is one the hub set. */
int kp_http_is_identity_header(const char *name, size_t len);

/* Does a Connection field of this request name a field that a proxy must
 * not drop as hop-by-hop? RFC 9110 7.6.1 lets a sender list any field
 * there, and a proxy removes what is listed; for Content-Length and
 * Transfer-Encoding that hands the next hop other framing than the proxy
 * parsed (request smuggling), for Host another target, for Authorization
 * and identity fields other credentials. Such a request is refused (400).
 * Returns 1 and points *name and *len at the first such option (borrowed from
 * head), 0 when there is none. */
int kp_http_connection_names_protected(const kp_http_head_t *head,
                                       const char **name, size_t *len);

/* Are fields[0..len) whole "Name: value\r\n" lines, each naming a field a
 * hub may set for a member: Impersonate-User, Impersonate-Group,
 * Impersonate-Uid, Impersonate-Extra-<name> or Audit-ID (case-insensitive),
 * one space after the colon, a value of field characters (RFC 9110 5.5: no
 * CR, LF, NUL or other control byte, no whitespace at either end)? 0 when
 * they are (an empty list is), KP_EINVAL when not. This is what keeps the
 * policy layer's identity fields from ever framing or routing a request. */
int kp_http_check_hub_fields(const char *fields, size_t len);

/* Builds the head a proxy sends on: method, `target`, the version of
 * `head`, then every field of `head` except
 *  - hop-by-hop fields (Connection and every field it names, Keep-Alive,
 *    Proxy-Connection, Proxy-Authorization, TE, Trailer, Upgrade; Upgrade
 *    is kept and "Connection: Upgrade" written for an upgrade request);
 *  - Content-Length and Transfer-Encoding: the framing is written anew from
 *    what the parser decided ("Transfer-Encoding: chunked" or
 *    "Content-Length: N" or nothing), so the next hop frames the body
 *    exactly as this hop relays it, whatever the caller wrote;
 *  - those matching an entry of `drop` (NULL-terminated, lower case; an
 *    entry ending in '*' matches by prefix, "x-kopilot-*";
 *    KP_HTTP_DROP_IDENTITY matches every kp_http_is_identity_header field);
 * then `extra` (raw "Name: value\r\n" lines) and the blank line.
 * Returns a malloc'd buffer (owned by the caller; *out_len its length), or
 * NULL when out of memory. */
#define KP_HTTP_DROP_IDENTITY "@identity"
uint8_t *kp_http_build_request(const kp_http_head_t *head, const char *target,
                               size_t target_len, const char *const *drop,
                               const char *extra, size_t extra_len,
                               size_t *out_len);

/* The body of an error answer as kube-apiserver writes them: a v1 Status
 * object, {"kind":"Status","apiVersion":"v1","metadata":{},"status":
 * "Failure","message":...,"reason":...,"code":N}, and a newline. message
 * and reason are NUL-terminated and escaped for JSON; a byte that is not
 * part of valid UTF-8 becomes U+FFFD, so the body is valid JSON whatever
 * a caller put in a message. The one Status builder: the core's own
 * answers and the Swift side's (kubernetesStatus) both use it. Returns a
 * malloc'd NUL-terminated string (*out_len its length, NUL excluded), or
 * NULL when out of memory. */
char *kp_status_json(int code, const char *reason, const char *message,
                     size_t *out_len);

/* Body framing. A proxy forwards a body as it came (chunked stays chunked),
 * so the body scanner only has to find where the body ends; it also reports
 * the payload bytes inside what it consumed, for callers that want them. */
typedef enum kp_http_body_mode {
  KP_HTTP_BODY_NONE = 0,    /* no body (e.g. GET without length, 204, HEAD) */
  KP_HTTP_BODY_LENGTH = 1,  /* Content-Length bytes */
  KP_HTTP_BODY_CHUNKED = 2, /* chunked transfer coding, trailers included */
  KP_HTTP_BODY_UNTIL_CLOSE = 3 /* response without length: ends at EOF */
} kp_http_body_mode_t;

typedef struct kp_http_body {
  kp_http_body_mode_t mode;
  uint64_t remaining; /* LENGTH: bytes left; CHUNKED: bytes left in chunk */
  int state;          /* private chunked-decoder state */
  uint32_t line_len;  /* private: length of the size line / trailer so far */
  int done;           /* set once the whole body has been seen */
  int no_trailers;    /* private: a request's chunked body may carry none */
} kp_http_body_t;

/* Sets up *body (caller-owned, no resources) for the message whose head was
 * parsed; head is only read during the call (RFC 9112 6.3).
 * is_request: 1 for a request body: chunked, else Content-Length, else none.
 * For a response: request_method_head says the request was HEAD; that and
 * status 1xx/204/304 mean no body; otherwise chunked, Content-Length, or
 * UNTIL_CLOSE. Modes NONE and LENGTH 0 start with done set. */
void kp_http_body_init(kp_http_body_t *body, const kp_http_head_t *head,
                       int is_request, int request_method_head);

/* Scans body bytes in[0..len) (borrowed; never written). Returns the number
 * of bytes that belong to the body (<= len, and <= INT_MAX; all of them may
 * be forwarded as they are), 0 once done, or KP_EBADMSG for malformed
 * chunked framing (bad hex, more than 16 size digits, missing CRLF after
 * data, control bytes in extensions or trailers, a size line over 4 KiB or
 * trailers over 64 KiB, any trailer field in a request: a proxy would pass
 * fields on after it checked the head, and no Kubernetes client sends
 * request trailers); after an error every call fails again.
 * Sets body->done when the end was reached; the bytes after the returned
 * count belong to the next message. UNTIL_CLOSE never sets done: the caller
 * ends the body when the peer closes.
 * If data is not NULL (data_len must then be too), *data and *data_len
 * receive the first payload range inside the consumed bytes (NULL/0 when
 * none; the range points into `in`). For chunked the scanner stops right
 * after each payload range: call again on the rest for further ranges. With
 * data NULL it scans as far as it can in one call. */
int kp_http_body_scan(kp_http_body_t *body, const uint8_t *in, size_t len,
                      const uint8_t **data, size_t *data_len);

/* ------------------------------------------------------------------ */
/* WebSocket (RFC 6455), no I/O                                        */
/* ------------------------------------------------------------------ */

#define KP_WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define KP_WS_SUBPROTOCOL "kopilot.v2"

enum {
  KP_WS_OP_CONT = 0x0,
  KP_WS_OP_TEXT = 0x1,
  KP_WS_OP_BINARY = 0x2,
  KP_WS_OP_CLOSE = 0x8,
  KP_WS_OP_PING = 0x9,
  KP_WS_OP_PONG = 0xA
};

enum {
  KP_WS_CLOSE_NORMAL = 1000,
  KP_WS_CLOSE_GOING_AWAY = 1001,
  KP_WS_CLOSE_PROTOCOL = 1002,
  KP_WS_CLOSE_UNSUPPORTED = 1003,
  KP_WS_CLOSE_NO_STATUS = 1005, /* never on the wire */
  KP_WS_CLOSE_ABNORMAL = 1006,  /* never on the wire */
  KP_WS_CLOSE_INVALID_DATA = 1007,
  KP_WS_CLOSE_POLICY = 1008,
  KP_WS_CLOSE_TOO_BIG = 1009,
  KP_WS_CLOSE_INTERNAL = 1011
};

/* Close codes a peer may put on the wire (RFC 6455 7.4.1 and the IANA
 * "WebSocket Close Code Number Registry", 11.7): 1000-1003, 1007-1014 and
 * 3000-4999. 1005, 1006 and 1015 are reserved for reporting and never sent;
 * 1004, 1016-2999 are unassigned. Returns 1 when `code` is valid. */
int kp_ws_close_code_valid(int code);

/* ---- Handshake (RFC 6455 4). No HTTP parsing here: the caller hands in
 * the head's name/value pairs (e.g. kp_http_head_t.headers), all borrowed. */

/* Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 4.2.2 step 5.4):
 * base64(SHA-1(key + KP_WS_GUID)). key is borrowed and need not be
 * NUL-terminated. Writes 28 chars and a NUL into out. Returns 0, or KP_ENOMEM
 * when OpenSSL cannot allocate a digest context. */
int kp_ws_accept_key(const char *key, size_t key_len, char out[29]);
/* A fresh random Sec-WebSocket-Key (RFC 6455 4.1: 16 random bytes, base64)
 * into out: 24 chars and a NUL. Returns 0, or KP_EIO when the CSPRNG fails. */
int kp_ws_client_key(char out[25]);

/* Checks the WebSocket headers of an opening handshake request (RFC 6455
 * 4.2.1 items 3-6): Upgrade lists the token "websocket", Connection lists
 * "Upgrade" (both case-insensitive, comma-separated lists, possibly over
 * several header lines), exactly one Sec-WebSocket-Key whose value is base64
 * of 16 bytes, and exactly one Sec-WebSocket-Version: 13. The method (GET),
 * HTTP version and Host are the HTTP layer's to check.
 * Returns 0 and points *key and *key_len (either may be NULL) at the key's value inside
 * headers (borrowed); KP_EUNSUPPORTED when only the version is wrong (answer
 * 426 with "Sec-WebSocket-Version: 13", 4.2.2 / 4.4); KP_EBADMSG otherwise
 * (answer 400). */
int kp_ws_check_request(const kp_http_header_t *headers, size_t n,
                        const char **key, size_t *key_len);
/* Checks a 101 response's WebSocket headers as a client must (RFC 6455 4.1,
 * the client's steps 2-4 after the status line): Upgrade "websocket",
 * Connection "Upgrade", and Sec-WebSocket-Accept equal to
 * kp_ws_accept_key(client_key). The status code is the caller's to check.
 * Returns 0 or KP_EBADMSG (fail the connection). */
int kp_ws_check_response(const kp_http_header_t *headers, size_t n,
                         const char *client_key);

/* ---- Framing (RFC 6455 5.2) */

typedef struct kp_ws_frame_head {
  int fin;
  int rsv;    /* the three RSV bits, as 0..7 */
  int opcode; /* KP_WS_OP_* */
  int masked;
  uint8_t mask[4];
  uint64_t payload_len;
  size_t head_len; /* 2..14 */
} kp_ws_frame_head_t;

/* Decodes a frame head from buf[0..len) (borrowed; bytes past head_len are
 * never read). Returns head_len (2..14), KP_EAGAIN if incomplete, KP_EPROTO
 * for a non-minimal length (5.2: "the minimal number of bytes MUST be used")
 * or a 64-bit length with the most significant bit set. Does no validation
 * beyond the encoding itself; kp_ws_decoder does that. *h is written only on
 * success. */
int kp_ws_frame_head_decode(const uint8_t *buf, size_t len,
                            kp_ws_frame_head_t *h);
/* Encodes a minimal frame head into out (2..14 bytes); mask NULL = unmasked,
 * rsv bits 0. Returns the number of bytes written, or 0 (nothing written)
 * when opcode > 15 or payload_len >= 2^63. The payload itself is the
 * caller's: mask it with kp_ws_mask(payload, len, mask, 0). */
size_t kp_ws_frame_head_encode(uint8_t out[14], int fin, int opcode,
                               const uint8_t *mask, uint64_t payload_len);
/* XORs data with the mask in place (5.3); `offset` is the position of
 * data[0] in the frame's payload, so a payload may be unmasked in pieces.
 * Masking twice with the same offset restores the data. */
void kp_ws_mask(uint8_t *data, size_t len, const uint8_t mask[4],
                uint64_t offset);
/* Builds a Close frame's payload (5.5.1): the code big-endian, then the
 * reason (borrowed, UTF-8, at most 123 bytes). code 1005 (no status) gives an
 * empty payload and no reason is allowed with it. Returns the payload length
 * (0..125) or KP_EINVAL for a code that may not be sent, a reason that is too
 * long or not UTF-8. */
int kp_ws_close_payload_encode(uint8_t out[125], int code,
                               const uint8_t *reason, size_t reason_len);

/* ---- Streaming decoder with the validation RFC 6455 asks for */
typedef enum kp_ws_event_type {
  KP_WS_EV_NONE = 0,
  KP_WS_EV_DATA = 1,  /* a piece of a data message (payload unmasked) */
  KP_WS_EV_PING = 2,  /* a whole ping; payload in data/len */
  KP_WS_EV_PONG = 3,  /* a whole pong */
  KP_WS_EV_CLOSE = 4  /* a close frame; close_code, reason in data/len */
} kp_ws_event_type_t;

typedef struct kp_ws_event {
  kp_ws_event_type_t type;
  int opcode;       /* DATA: TEXT or BINARY of the message */
  int message_end;  /* DATA: this piece ends the message */
  /* DATA: points into the caller's input (borrowed from it; already
   * unmasked in place). PING/PONG/CLOSE: points into the decoder's cbuf,
   * valid until the next kp_ws_decode call on this decoder. */
  uint8_t *data;
  size_t len;
  int close_code;   /* CLOSE: the code, or 1005 when none was sent */
} kp_ws_event_t;

typedef struct kp_ws_decoder {
  int is_server;            /* 1: frames must be masked (from a client) */
  uint64_t max_message;     /* 0: unlimited; else larger -> 1009 */
  int close_code;           /* after an error: the code to close with */
  /* private state */
  int state;
  kp_ws_frame_head_t cur;
  uint64_t cur_done;        /* payload bytes of `cur` consumed so far */
  int msg_opcode;           /* 0 when no message is open */
  uint64_t msg_len;         /* payload bytes of the open message so far */
  uint32_t utf8;            /* incremental UTF-8 validator state (TEXT) */
  uint8_t hbuf[14];         /* a frame head split across calls */
  size_t hlen;
  uint8_t cbuf[125];        /* control frame payload being collected */
  size_t clen;
} kp_ws_decoder_t;

/* Sets up *d (caller-owned, no allocation; nothing to free). is_server: 1
 * when decoding frames from a client. max_message: the largest data message
 * accepted (sum of its fragments' payloads), 0 for no limit. */
void kp_ws_decoder_init(kp_ws_decoder_t *d, int is_server,
                        uint64_t max_message);
/* Decodes from in[0..len) (borrowed), unmasking payload in place. Returns
 * the number of bytes consumed (>= 0) and fills *ev (type NONE if nothing
 * complete yet; then all of in was consumed). At most one event per call:
 * call again with the rest while it returns an event. Data messages come in
 * pieces as their bytes arrive (zero-copy); control frames come whole, also
 * between the fragments of a data message (5.4). An empty non-final fragment
 * gives no event; an empty final one gives DATA with len 0, message_end 1.
 * Returns KP_EPROTO on a violation and sets d->close_code: 1002 (framing,
 * masking, RSV, opcode, control-frame rules, close code), 1007 (invalid
 * UTF-8 in a TEXT message or a close reason) or 1009 (over max_message);
 * the connection must then be closed with that code, and further calls
 * return KP_EPROTO again. After a CLOSE event the peer may send nothing more
 * (5.5.1); further calls with len > 0 return KP_ECLOSED. */
int kp_ws_decode(kp_ws_decoder_t *d, uint8_t *in, size_t len,
                 kp_ws_event_t *ev);

/* ------------------------------------------------------------------ */
/* Mux: hashicorp/yamux-compatible framing (its spec.md)               */
/* ------------------------------------------------------------------ */

#define KP_MUX_VERSION 0
#define KP_MUX_HEADER_SIZE 12
#define KP_MUX_INITIAL_WINDOW (256 * 1024)

enum {
  KP_MUX_TYPE_DATA = 0,
  KP_MUX_TYPE_WINDOW_UPDATE = 1,
  KP_MUX_TYPE_PING = 2,
  KP_MUX_TYPE_GO_AWAY = 3
};
enum {
  KP_MUX_FLAG_SYN = 1,
  KP_MUX_FLAG_ACK = 2,
  KP_MUX_FLAG_FIN = 4,
  KP_MUX_FLAG_RST = 8
};
enum {
  KP_MUX_GOAWAY_NORMAL = 0,
  KP_MUX_GOAWAY_PROTOCOL = 1,
  KP_MUX_GOAWAY_INTERNAL = 2
};

typedef struct kp_mux_header {
  uint8_t version;
  uint8_t type;
  uint16_t flags;
  uint32_t stream_id;
  uint32_t length;
} kp_mux_header_t;

/* Big-endian, 12 bytes. */
void kp_mux_header_encode(uint8_t out[KP_MUX_HEADER_SIZE],
                          const kp_mux_header_t *h);
/* Returns KP_MUX_HEADER_SIZE, KP_EAGAIN (len < 12) or KP_EPROTO (bad version
 * or type). *h is written only on success. Flags other than SYN/ACK/FIN/RST
 * are passed through (yamux ignores them). */
int kp_mux_header_decode(const uint8_t *in, size_t len, kp_mux_header_t *h);

/* A mux session: a pure state machine. Its owner feeds it the bytes read from
 * the transport (kp_mux_feed), drives its clock (kp_mux_tick) and gets the
 * bytes to send through callbacks.send.
 *
 * Memory is bounded: the session queues no bytes. Control frames (ACK,
 * window updates, ping replies, RST, GoAway) go out through send at once;
 * stream data is sent only within the peer's window and never while the
 * transport is blocked (kp_mux_set_send_blocked), so the owner bounds its
 * transport buffer and stops reading while it is full.
 *
 * Callbacks and reentrancy. Every callback runs on the thread that called
 * the kp_mux_* function that fired it; the session is not thread-safe.
 *  - Inside on_stream, on_data, on_eof, on_writable, on_stream_close,
 *    on_goaway and on_close the application may call: kp_mux_open,
 *    kp_mux_goaway, kp_mux_ping, kp_mux_close, kp_mux_set_send_blocked,
 *    and on any stream kp_mux_stream_accept/write/consume/close/reset and the
 *    accessors. Work those calls cause that would call back (a stream
 *    finishing, a stream becoming writable, the session closing) is deferred
 *    until the outermost kp_mux_* call is about to return, so no callback
 *    ever runs nested inside another one.
 *  - Not allowed inside callbacks: kp_mux_feed and kp_mux_tick (they return
 *    KP_EINVAL / UINT64_MAX). kp_mux_free inside a callback is a bug in the
 *    owner; as a safety net the free is deferred until the outermost call
 *    returns (so freeing from on_close works), and nothing more fires.
 *  - Inside send only kp_mux_set_send_blocked may be called.
 *  - A stream handle stays valid until its on_stream_close returns (or the
 *    session is freed). Once a stream is finished, frames for its id are
 *    "unknown stream" frames: drained and logged.
 * The `ud` argument of every callback is the session's user pointer (given
 * to kp_mux_new); per-stream data is kp_mux_stream_user_data(s). */
typedef struct kp_mux kp_mux_t;
typedef struct kp_mux_stream kp_mux_stream_t;

typedef struct kp_mux_config {
  int is_server;            /* server opens even stream ids, client odd */
  uint32_t window;          /* receive window per stream; >= 256 KiB */
  /* Auto-tuning: 0 = every stream announces `window` at once (yamux's
   * fixed window). Else a stream starts with this receive window (>= 256
   * KiB, <= window) and doubles it, up to `window`, each time the reader
   * consumed half of it within KP_MUX_TUNE_FLOOR_MS plus two measured
   * round trips, twice in a row: the window then limits the transfer
   * (HTTP/2 and QUIC stacks tune the same way). A reader that keeps the
   * data waiting, or that was held back since the last update
   * (kp_mux_stream_reader_held), never earns more, so a slow reader pins
   * little. */
  uint32_t window_start;
  uint32_t accept_backlog;  /* unaccepted inbound streams (> 0); more: RST */
  uint32_t max_streams;     /* open streams in total; 0 = 65536; more: RST
                             * inbound, KP_ETOOMANY outbound */
  uint64_t keepalive_ms;    /* ping interval; 0 = no keepalive */
  uint64_t keepalive_timeout_ms; /* unanswered ping closes the session;
                                  * 0 = keepalive_ms */
} kp_mux_config_t;

/* Fills defaults: window 256 KiB, backlog 256, keepalive 30 s, timeout 30 s
 * (hashicorp/yamux's DefaultConfig). */
void kp_mux_config_default(kp_mux_config_t *cfg, int is_server);

typedef struct kp_mux_callbacks {
  /* Required. Bytes to write to the transport, in order: n buffers (1 or
   * 2: a header and a payload). The session copies nothing: bufs may point
   * into caller data (kp_mux_stream_write) and are borrowed for the call
   * only, so the transport must consume them before returning (TLS
   * encrypts them; a test copies them). Nothing is sent after the session
   * closed. */
  void (*send)(kp_mux_t *m, const uint8_t *const *bufs, const size_t *lens,
               size_t n, void *ud);
  /* The peer opened a stream. Call kp_mux_stream_accept() now or later;
   * until then it counts against the accept backlog. on_data/on_eof may
   * fire before it is accepted (the peer may send at once). A write or
   * close accepts it implicitly; a reset refuses it. */
  void (*on_stream)(kp_mux_t *m, kp_mux_stream_t *s, void *ud);
  /* Payload for a stream, pointing into the fed bytes (owned by `chunk`,
   * which may be NULL; take a reference to keep it past the callback, or
   * copy). The receive window is given back only by
   * kp_mux_stream_consume(), so a slow consumer stops the peer. */
  void (*on_data)(kp_mux_stream_t *s, const uint8_t *data, size_t len,
                  kp_chunk_t *chunk, void *ud);
  /* The peer half-closed the stream (FIN). No more on_data follows. */
  void (*on_eof)(kp_mux_stream_t *s, void *ud);
  /* The peer's window opened again after a write returned less than asked,
   * or the transport was unblocked. Fires once per short write. */
  void (*on_writable)(kp_mux_stream_t *s, void *ud);
  /* The stream is finished: status 0 (FIN both ways), KP_ERESET (the peer
   * sent RST), KP_EREFUSED (the peer sent RST before accepting: backlog
   * full or going away), KP_ECLOSED (we reset it) or the session's close
   * status. The handle is freed after this returns. */
  void (*on_stream_close)(kp_mux_stream_t *s, int status, void *ud);
  /* Optional: the peer sent GoAway(code). Code 0 (normal): no new streams
   * either way, existing ones go on; other codes close the session with
   * KP_EGOAWAY right after this. */
  void (*on_goaway)(kp_mux_t *m, uint32_t code, void *ud);
  /* The session ended: a GoAway with an error code was received
   * (KP_EGOAWAY), a protocol error (KP_EPROTO, GoAway(protocol) was sent),
   * keepalive timeout (KP_ETIMEDOUT), or kp_mux_close(status). Streams are
   * closed (on_stream_close) before this fires; it fires once. */
  void (*on_close)(kp_mux_t *m, int status, void *ud);
  /* Optional diagnostics (e.g. data for an unknown stream). msg is
   * borrowed and NUL-terminated. */
  void (*log)(kp_mux_t *m, const char *msg, void *ud);
} kp_mux_callbacks_t;

/* Creates a session; cfg and cbs are copied. Returns 0 or
 * KP_ENOMEM/KP_EINVAL (no send callback, window < 256 KiB, backlog 0). */
int kp_mux_new(kp_mux_t **out, const kp_mux_config_t *cfg,
               const kp_mux_callbacks_t *cbs, void *ud);
/* Frees the session and any streams left (no callbacks fire; nothing is
 * sent). See the reentrancy rules above for calls from a callback. */
void kp_mux_free(kp_mux_t *m);
void *kp_mux_user_data(kp_mux_t *m);

/* Feeds bytes read from the transport, in any split. `chunk` (may be NULL)
 * owns them; on_data hands out pointers into them. Returns 0, or a negative
 * error after which the session is closed: KP_EPROTO (GoAway(protocol) was
 * sent), KP_EGOAWAY, the status given to kp_mux_close from a callback
 * (KP_ECLOSED when that was 0); KP_ECLOSED if it was already closed;
 * KP_EINVAL from a callback. */
int kp_mux_feed(kp_mux_t *m, const uint8_t *data, size_t len,
                kp_chunk_t *chunk);
/* Advances the clock (monotonic ms, any origin): sends keepalive pings and
 * enforces their timeout (closing with KP_ETIMEDOUT). The first call starts
 * the clock. Returns the delay in ms until the next call is needed
 * (UINT64_MAX: none). */
uint64_t kp_mux_tick(kp_mux_t *m, uint64_t now_ms);
/* Tells the session the time (ms, the clock kp_mux_tick uses) without
 * running timers: window auto-tuning measures with it. Cheap; call it when
 * bytes arrive. Any time, callbacks included. */
void kp_mux_set_now(kp_mux_t *m, uint64_t now_ms);
/* The window tuning's time allowance (see kp_mux_config_t.window_start). */
#define KP_MUX_TUNE_FLOOR_MS 10
/* A stream's current receive window (what it announced in all). */
uint32_t kp_mux_stream_recv_target(const kp_mux_stream_t *s);
/* Tells the session whether the transport can take more bytes. While
 * blocked, stream writes return 0; unblocking fires on_writable for the
 * streams that were refused. Control frames are still sent. */
void kp_mux_set_send_blocked(kp_mux_t *m, int blocked);
/* Sends GoAway(code): no new streams either way (an inbound SYN gets RST,
 * kp_mux_open returns KP_EGOAWAY); existing ones finish. The session stays
 * open: the owner closes it (e.g. when kp_mux_num_streams() is 0). */
int kp_mux_goaway(kp_mux_t *m, uint32_t code);
/* Closes at once: every stream gets on_stream_close(status, or KP_ECLOSED
 * when status is 0), then on_close(status). Sends nothing (call
 * kp_mux_goaway first for a polite close). Idempotent. */
void kp_mux_close(kp_mux_t *m, int status);
/* Sends a ping now (also used by keepalive); its answer is awaited with the
 * keepalive timeout, from the last kp_mux_tick time. */
int kp_mux_ping(kp_mux_t *m);
/* Streams open (not finished). */
uint32_t kp_mux_num_streams(const kp_mux_t *m);
/* 1 once the session is closed. */
int kp_mux_is_closed(const kp_mux_t *m);

/* Opens a stream (a WindowUpdate with SYN goes out at once, announcing
 * window - 256 KiB of extra window). *out is owned by the session (valid
 * until on_stream_close). KP_EGOAWAY, KP_ETOOMANY, KP_ECLOSED. */
int kp_mux_open(kp_mux_t *m, kp_mux_stream_t **out);
/* Sends the ACK (a WindowUpdate announcing window - 256 KiB). KP_EINVAL if
 * not an inbound stream or already accepted; KP_ECLOSED if finished. */
int kp_mux_stream_accept(kp_mux_stream_t *s);
uint32_t kp_mux_stream_id(const kp_mux_stream_t *s);
void kp_mux_stream_set_user_data(kp_mux_stream_t *s, void *ud);
void *kp_mux_stream_user_data(const kp_mux_stream_t *s);
kp_mux_t *kp_mux_stream_session(const kp_mux_stream_t *s);
/* Writes up to len bytes within the peer's window, as one Data frame; data
 * is borrowed for the call (passed to send). Returns the count sent (less
 * than len, maybe 0, when the window or transport is full: on_writable
 * follows), or an error (KP_ECLOSED after a local close or once the stream
 * or session is finished, KP_ERESET / KP_EREFUSED after the peer's RST). */
int64_t kp_mux_stream_write(kp_mux_stream_t *s, const uint8_t *data,
                            size_t len);
/* Bytes the stream may send now (the peer's window). */
uint32_t kp_mux_stream_send_window(const kp_mux_stream_t *s);
/* The application is done with n received bytes (clamped to what was
 * delivered and not yet consumed): the window is given back, in one window
 * update once half the window is owed (as yamux's sendWindowUpdate does). */
void kp_mux_stream_consume(kp_mux_stream_t *s, size_t n);
/* The application could not pass received bytes on (where it sends them
 * was full): until the next window update, the stream's reader and not its
 * window sets the pace, so auto-tuning does not grow the window. A reader
 * behind a socket buffer that swallows its first megabytes at once would
 * otherwise earn a large window and then pin it. */
void kp_mux_stream_reader_held(kp_mux_stream_t *s);
/* Half-close: sends FIN. Reading goes on until the peer's FIN. 0 if FIN was
 * already sent; KP_ECLOSED if the stream is finished. */
int kp_mux_stream_close(kp_mux_stream_t *s);
/* Aborts: sends RST; on_stream_close(KP_ECLOSED) follows (the peer sees
 * KP_ERESET, or KP_EREFUSED if it had not been accepted). */
int kp_mux_stream_reset(kp_mux_stream_t *s);

/* ------------------------------------------------------------------ */
/* TLS (OpenSSL), no I/O                                               */
/* ------------------------------------------------------------------ */

/* A TLS engine driven by its owner, as the codecs are: the owner feeds it
 * the ciphertext it read from the socket (kp_tls_feed), moves plaintext in
 * and out with kp_tls_write/kp_tls_read, and after EVERY call takes the
 * ciphertext to send with kp_tls_out_pop (owned slices of pooled chunks,
 * ready for uv_write; the engine's BIO encrypts straight into them, so
 * there is no second copy). Nothing here touches a socket, a clock or a
 * global other than OpenSSL's own.
 *
 * Threads: a context may be shared by engines on any threads; one engine
 * must be used by one thread at a time.
 *
 * Versions: TLS 1.2 is the minimum, always. Ciphers: ECDHE with AEADs only
 * for TLS 1.2 (AES-GCM first, ChaCha20-Poly1305 preferred only for clients
 * that prefer it), OpenSSL's TLS 1.3 suites with AES-GCM first. */

typedef struct kp_tls_ctx kp_tls_ctx_t;
typedef struct kp_tls kp_tls_t;

/* Protocol versions, as on the wire (for max_version and the test hook). */
enum {
  KP_TLS_VERSION_1_1 = 0x0302, /* refused; only the test hook speaks it */
  KP_TLS_VERSION_1_2 = 0x0303,
  KP_TLS_VERSION_1_3 = 0x0304
};

/* Every pointer is borrowed for the kp_tls_ctx_new call only.
 * PEM: a *_pem field holds PEM text; its *_pem_len of 0 means "NUL-
 * terminated". A *_file field names a PEM file. Give a file or PEM text,
 * not both. A certificate may be followed by its chain (leaf first). */
typedef struct kp_tls_ctx_options {
  int is_server;
  /* Our certificate and key: required for a server, optional for a client
   * (presented when the server asks: mutual TLS). */
  const char *cert_file;
  const char *cert_pem;
  size_t cert_pem_len;
  const char *key_file;
  const char *key_pem;
  size_t key_pem_len;
  /* Trust anchors. Client: verifies the server against them; none given =
   * the system's default store. Server: verifies client certificates
   * (required when require_client_cert is set). */
  const char *ca_file;
  const char *ca_pem;
  size_t ca_pem_len;
  /* Client only: accept any server certificate and name. For tests and
   * explicit opt-in only; SNI is still sent. */
  int insecure_skip_verify;
  /* Server only: mutual TLS; a client without a certificate that chains to
   * the CA is refused. */
  int require_client_cert;
  /* ALPN protocol names (RFC 7301), most preferred first. Client: offered.
   * Server: the first of ours the client also offers is picked; a client
   * that offers ALPN but none of ours is refused (no_application_protocol,
   * RFC 7301 3.2). NULL/0: no ALPN. Each name 1..255 bytes. */
  const char *const *alpn;
  size_t alpn_count;
  /* Highest version to speak; 0 = the newest (TLS 1.3). KP_TLS_VERSION_1_2
   * pins TLS 1.2 (tests of the 1.2 path, peers with broken 1.3). */
  int max_version;
} kp_tls_ctx_options_t;

/* Creates a context with one reference, owned by the caller (*out).
 * Returns 0, KP_EINVAL (inconsistent options; err says which), KP_ETLS (a
 * certificate, key or CA could not be loaded; err has OpenSSL's reason) or
 * KP_ENOMEM. err (may be NULL) receives a NUL-terminated message. */
int kp_tls_ctx_new(kp_tls_ctx_t **out, const kp_tls_ctx_options_t *o,
                   char *err, size_t errlen);
/* Drops the caller's reference. Engines made from the context hold their
 * own, so a reloaded certificate can be swapped in by making a new context
 * and freeing the old one while its connections live on. Any thread. */
void kp_tls_ctx_free(kp_tls_ctx_t *ctx);
/* Takes another reference (dropped with kp_tls_ctx_free). */
void kp_tls_ctx_ref(kp_tls_ctx_t *ctx);

/* Test hook, never for production: forces the protocol version range of a
 * context and lowers OpenSSL's security level to 0, so a test can build a
 * TLS 1.1-only client and check that our servers refuse it. */
int kp__tls_ctx_force_versions(kp_tls_ctx_t *ctx, int min_version,
                               int max_version);

/* Creates an engine for one connection; it holds a reference to ctx.
 * Client: server_name (required unless insecure_skip_verify) is checked
 * against the certificate's SANs - as an IP address when it is an IPv4 or
 * IPv6 literal (no brackets), else as a DNS name - and sent as SNI unless
 * it is an IP literal (RFC 6066 3). Server: pass NULL.
 * Returns 0, KP_EINVAL or KP_ENOMEM. */
int kp_tls_new(kp_tls_t **out, kp_tls_ctx_t *ctx, const char *server_name);
/* Frees the engine and every chunk reference it holds. Slices already
 * popped stay valid (they own their references). */
void kp_tls_free(kp_tls_t *t);

/* Hands the engine ciphertext read from the socket, in order. If chunk is
 * not NULL it owns data: the engine takes a reference and reads the bytes
 * in place later, so the owner must not overwrite data[0..len) (reading
 * further into the same chunk is fine). If chunk is NULL the bytes are
 * copied into pooled chunks. The engine retains fed bytes only until
 * OpenSSL pulls them into its record buffer, which kp_tls_handshake /
 * kp_tls_read do; once they return KP_EAGAIN it retains none.
 * Returns 0 or KP_ENOMEM. Does not process anything by itself. */
int kp_tls_feed(kp_tls_t *t, const uint8_t *data, size_t len,
                kp_chunk_t *chunk);

/* Advances the handshake with the input fed so far. Returns 0 when it is
 * complete (also on later calls), KP_EAGAIN when more input is needed (send
 * the output first), KP_ECERT when a certificate was refused - ours by the
 * peer or the peer's by us - or KP_ETLS for any other failure (version,
 * ALPN, malformed records). After an error, kp_tls_last_error says why and
 * the output may hold an alert worth sending before closing. Note that a
 * client may finish before the server has checked the client's certificate:
 * a refusal then arrives as an error from kp_tls_read. */
int kp_tls_handshake(kp_tls_t *t);

/* Decrypts up to cap (> 0) bytes of plaintext into out. Returns the count,
 * KP_EAGAIN (feed more; also while the handshake runs, which this drives),
 * KP_ECLOSED when the peer sent close_notify (a clean end of stream), or
 * KP_ECERT/KP_ETLS. Call until KP_EAGAIN after each feed. The socket's EOF
 * without close_notify is the owner's to report (truncation). */
int kp_tls_read(kp_tls_t *t, uint8_t *out, size_t cap);

/* Encrypts all of data[0..len) into records of at most 16 KiB appended to
 * the output. Returns len, KP_EAGAIN if the handshake is not complete (the
 * data is not taken), KP_ECLOSED after kp_tls_shutdown or a fatal error's
 * code. Each call makes at least one record, so batch small pieces - or
 * use kp_tls_writev, which does. */
int64_t kp_tls_write(kp_tls_t *t, const uint8_t *data, size_t len);
/* Encrypts bufs[0..n) as one stream, coalescing pieces into full records
 * (a 12-byte mux header and its payload share a record). Same returns as
 * kp_tls_write, with the total length. The shape matches kp_mux_callbacks
 * .send, so a mux session can write straight into TLS. */
int64_t kp_tls_writev(kp_tls_t *t, const uint8_t *const *bufs,
                      const size_t *lens, size_t n);

/* Queues close_notify (RFC 8446 6.1); writes fail with KP_ECLOSED after it.
 * Reading may go on until the peer's close_notify. Returns 0 or KP_ETLS. */
int kp_tls_shutdown(kp_tls_t *t);

/* Takes the oldest pending ciphertext: returns 1 and fills *out with an
 * owned slice (out->chunk holds one reference: kp_chunk_unref it after the
 * write completes), or 0 when nothing is pending. Output may span several
 * slices; pop until 0. Once nothing is pending the engine holds no output
 * chunk. */
int kp_tls_out_pop(kp_tls_t *t, kp_slice_t *out);
/* Ciphertext bytes waiting to be popped. */
size_t kp_tls_out_pending(const kp_tls_t *t);
/* Chunk references the engine holds right now (fed input not yet pulled by
 * OpenSSL plus pending output); 0 for an idle connection. For tests and
 * memory metrics. */
size_t kp_tls_chunks_held(const kp_tls_t *t);

/* 1 once the handshake is complete. */
int kp_tls_is_established(const kp_tls_t *t);
/* The negotiated ALPN protocol (not NUL-terminated, borrowed: valid until
 * kp_tls_free) and its length; NULL with *len 0 when none. */
const uint8_t *kp_tls_alpn(const kp_tls_t *t, size_t *len);
/* Server: the SNI name the client sent, NUL-terminated, borrowed until
 * kp_tls_free; NULL when none. Client: the name given to kp_tls_new. */
const char *kp_tls_server_name(const kp_tls_t *t);
/* 1 when the handshake resumed a session instead of a full handshake.
 * Client contexts keep the newest session the server gave them and offer
 * it on their next connection to the same server_name (a TLS 1.3 ticket
 * once, a TLS 1.2 session until replaced); servers resume with stateless
 * tickets whose keys belong to the context. */
int kp_tls_resumed(const kp_tls_t *t);
/* The negotiated version (KP_TLS_VERSION_*), 0 before the handshake. */
int kp_tls_version(const kp_tls_t *t);
/* Why the engine failed, e.g. "certificate verify failed: hostname
 * mismatch" or "client certificate required: peer did not return a
 * certificate"; "" while nothing has failed. Borrowed: valid until the next
 * failing call or kp_tls_free. */
const char *kp_tls_last_error(const kp_tls_t *t);

#ifdef __cplusplus
}
#endif
#endif /* KOPILOT_H */
