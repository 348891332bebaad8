/* relay.h - one HTTP/1.1 connection relayed to a back end, request by
 * request (private).
 *
 * The front is where requests come from (a caller's TLS connection at the
 * hub, a mux stream at the agent); the back is where the current request
 * goes (a mux stream at the hub, an upstream TLS connection at the agent).
 * The relay parses each request head on the front and asks its router what
 * to do; it then streams the body to the back, parses the response head and
 * streams the response body to the front, and after a 101 relays raw bytes
 * both ways. Bodies are never buffered: each direction holds at most what
 * the source delivered in one read (conn) or the mux window (stream), and a
 * destination that cannot take more stops its source. */
#ifndef KOPILOT_RELAY_H
#define KOPILOT_RELAY_H

#include "internal.h"

/* An endpoint: a conn or a mux stream, seen through these operations. */
typedef struct kp__ep_ops {
  /* Takes up to n bytes (copied or encrypted before it returns); returns
   * the count taken, fewer when the destination is full (the relay then
   * waits for kp__relay_writable), or a negative error. */
  int64_t (*write)(void *h, const uint8_t *p, size_t n);
  /* Source flow control for endpoints that can pause reading. */
  void (*read)(void *h, int on);
  /* The relay is done with n delivered bytes (a stream returns window). */
  void (*consumed)(void *h, size_t n);
  /* The relay could not pass this source's bytes on (the destination was
   * full): a stream then does not grow its window. Optional. */
  void (*held)(void *h);
  /* Bytes written but not yet taken by the kernel (a conn's queue). */
  uint64_t (*pending)(void *h);
  /* No more bytes will be written (FIN / close_notify). */
  void (*shutdown)(void *h);
  /* Closes at once (RST / close). */
  void (*abort)(void *h, int err);
} kp__ep_ops_t;

typedef struct kp__ep {
  const kp__ep_ops_t *ops;
  void *h;
} kp__ep_t;

typedef struct kp__relay kp__relay_t;

/* How an exchange with a back ended, as release_back reports it. */
typedef enum kp__relay_back_end {
  /* Failed or cut short (reset, malformed response, the front went away):
   * the back is in an unknown state; reset or close it. */
  KP__RELAY_BACK_FAILED = 0,
  /* The response is complete but the back cannot carry another request:
   * the response said Connection: close or was HTTP/1.0 without
   * keep-alive, its body ran until close, it was a 101 and the back carried
   * raw bytes, the request was not HTTP/1.1 keep-alive, the response came
   * before the whole request body was sent, or the back sent bytes past the
   * response's end. Close it gracefully. */
  KP__RELAY_BACK_DONE = 1,
  /* The response is complete, the whole request went out, both said
   * keep-alive and the body was delimited (Content-Length, chunked or none;
   * RFC 9112 9.3): the back is at a request boundary and may carry the next
   * request (e.g. an upstream conn kept in a pool). */
  KP__RELAY_BACK_REUSABLE = 2
} kp__relay_back_end_t;

typedef struct kp__relay_router {
  /* A complete request head from the front. raw/raw_len are the head's
   * bytes. Answer (now or later, on the loop thread) with kp__relay_attach
   * or kp__relay_respond, or take the front with kp__relay_take_front. */
  void (*on_request)(kp__relay_t *r, const kp_http_head_t *head,
                     const uint8_t *raw, size_t raw_len);
  /* The exchange with the back ended; `how` says whether it failed and,
   * if not, whether the back may carry another request (see
   * kp__relay_back_end_t; nonzero means the response was complete). The
   * router owns the back again and the relay makes no more calls on it. It
   * may have paused the back's reads: a router that keeps a REUSABLE back
   * turns reading on again, to see the peer close it while idle. */
  void (*release_back)(kp__relay_t *r, kp__ep_t back, kp__relay_back_end_t how);
  /* Optional. The back went away (EOF, reset, close) before one byte of a
   * response came, and the request can be sent again as it was: it has no
   * body (no Content-Length but 0, not chunked), so nothing but the head
   * went to the back. The back is released or gone already. Return 1 to
   * send it again: the router then answers with kp__relay_attach (now or
   * later, with the head it built; the relay keeps no copy), as for a new
   * request. Return 0 for the usual 502. Whether a second attempt is safe
   * (an idempotent method, a back that was reused rather than fresh) is the
   * router's policy (RFC 9110 9.2.2). err: why the back ended (0: EOF). */
  int (*retry)(kp__relay_t *r, int err);
  /* The request's exchange with the back ended: the response status (0 if
   * no response head came back) and the bytes relayed each way (heads
   * included). Once per request that went to a back: an attempt that
   * ended before its response began and was sent again (retry) is not
   * reported alone, its bytes count in the next attempt's report. Called
   * just before release_back, or after it when a retry was possible.
   * Optional; for metrics and access logs. */
  void (*on_exchange)(kp__relay_t *r, int status, uint64_t bytes_up,
                      uint64_t bytes_down);
  /* The front is waiting for its next request head (after a response, or
   * a local answer); optional. A router arms its idle/head deadline here. */
  void (*on_idle)(kp__relay_t *r);
  /* Optional. The back ended before a response began and the relay is
   * about to answer 502: the router may write the Status message into
   * buf (NUL-terminated) and return 1, or return 0 for the relay's own.
   * err: why the back ended (0: EOF). */
  int (*describe_failure)(kp__relay_t *r, int err, char *buf, size_t len);
  /* Optional. The back's final response head came (status, 101 included;
   * interim 1xx heads are not reported), before any of it goes to the
   * front. For audit logs of long-running requests. The router must not
   * call into the relay from here. */
  void (*on_response)(kp__relay_t *r, int status);
  /* The relay is finished: the front is closed or was taken. */
  void (*on_done)(kp__relay_t *r);
} kp__relay_router_t;

typedef struct kp__relay_config {
  size_t max_head;        /* request and response heads; 0: 64 KiB */
  uint64_t high_water;    /* conn queue that stops a source; 0: 128 KiB */
} kp__relay_config_t;

int kp__relay_new(kp__relay_t **out, kp__ep_t front,
                  const kp__relay_router_t *router,
                  const kp__relay_config_t *cfg, void *ud);
void *kp__relay_user_data(kp__relay_t *r);

/* Endpoint events, from the endpoint glue (conn or stream callbacks). */
void kp__relay_front_data(kp__relay_t *r, const uint8_t *p, size_t n,
                          kp_chunk_t *chunk);
void kp__relay_back_data(kp__relay_t *r, const uint8_t *p, size_t n,
                         kp_chunk_t *chunk);
void kp__relay_front_eof(kp__relay_t *r);
void kp__relay_back_eof(kp__relay_t *r);
/* A destination can take more (window opened, queue drained). */
void kp__relay_writable(kp__relay_t *r);
/* An endpoint closed under us (reset, error, session lost). */
void kp__relay_front_closed(kp__relay_t *r, int err);
void kp__relay_back_closed(kp__relay_t *r, int err);

/* Router answers. */
/* Sends `head` (the rewritten request head, copied) to `back` and relays
 * the body and the response. */
int kp__relay_attach(kp__relay_t *r, kp__ep_t back, const uint8_t *head,
                     size_t head_len);
/* The same with a head built for this attempt only: the relay takes the
 * malloc'd buffer as it is (no copy) and frees it. */
int kp__relay_attach_owned(kp__relay_t *r, kp__ep_t back, uint8_t *head,
                           size_t head_len);
/* Answers the current request locally with a complete response; the request
 * body, if any, is read and dropped. close_after: end the connection. */
void kp__relay_respond(kp__relay_t *r, const uint8_t *resp, size_t len,
                       int close_after);
/* Hands the front over to an agent session after a 101: the relay stops
 * using it and finishes. The bytes already read past the head are copied
 * to *out (owned, malloc'd; NULL when *out_len is 0). Returns 0, or
 * KP_ENOMEM when they could not be copied (the front is let go all the
 * same: close it). */
int kp__relay_take_front(kp__relay_t *r, uint8_t **out, size_t *out_len);
/* Hands the front over with its current request, to go on in another
 * relay (kp__relay_resume, on another loop): *out holds the head's bytes
 * (the first *head_len) and those read after it, and *head is the parsed
 * head, pointing into *out (both owned, malloc'd). The relay finishes as
 * after kp__relay_take_front. Returns 0; KP_ENOMEM, or KP_EINVAL when
 * there is no current request, with nothing handed over (close the front). */
int kp__relay_take_request(kp__relay_t *r, kp_http_head_t **head,
                           size_t *head_len, uint8_t **out, size_t *out_len);
/* Starts a new relay (no byte fed yet) on a request taken with
 * kp__relay_take_request, owning head and bytes from here: the router's
 * on_request is called as for a head just read, without parsing it again.
 * The relay may be finished when this returns (see on_done). */
void kp__relay_resume(kp__relay_t *r, kp_http_head_t *head, size_t head_len,
                      uint8_t *bytes, size_t len);
/* For a front that starts with its reads off (a conn moved from another
 * loop, its first bytes fed with kp__relay_front_data): turns them on
 * unless the relay paused the front meanwhile (it turns them on itself
 * when it wants more). */
void kp__relay_front_start(kp__relay_t *r);
/* The current request's head, as parsed once when it came in; NULL
 * between requests. Valid until the request is over (a retry reads it
 * again). */
const kp_http_head_t *kp__relay_current_head(kp__relay_t *r);
/* Closes the front and any back at once. */
void kp__relay_abort(kp__relay_t *r, int err);

/* The reason phrase for a status code ("Status" for ones not listed). */
const char *kp__http_reason(int status);
/* A complete error response whose body is a Kubernetes Status object, as
 * kube-apiserver writes them (malloc'd; NULL when out of memory). */
uint8_t *kp__http_build_status(int status, const char *reason,
                               const char *message, int close,
                               size_t *out_len);
/* Whether a head built by kp_http_build_request can be read by the next
 * kopilot hop (an agent, a peer replica), whose parser takes at most
 * KP_HTTP_DEFAULT_MAX_HEAD bytes and KP_HTTP_MAX_HEADERS fields: the
 * fields a hop adds can push a head that fit here past either limit, and
 * such a request is refused here (431), never sent on to be refused there. */
int kp__http_head_fits(const uint8_t *head, size_t len);
/* A complete response with the given body (malloc'd). */
uint8_t *kp__http_build_response(int status, const char *reason,
                                 const char *content_type, const char *body,
                                 size_t body_len, int close, size_t *out_len);

#endif
