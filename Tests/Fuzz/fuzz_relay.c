/* fuzz_relay.c - drives the HTTP relay with fake endpoints.
 *
 * The input is split in two by its first byte: the first part arrives on the
 * front (requests), the second on the back (responses), in pieces whose
 * sizes come from the bytes themselves, interleaved. The fake destinations
 * take a varying share of each write (a full window or a slow socket), and
 * the router answers each request by attaching a fresh back, answering
 * locally, or taking the front (alone, or with its request as when a
 * connection moves to another loop), chosen from the request's length; a
 * back that ends before its response began is replaced at once every other
 * time (the retry hook) and refused otherwise, its 502 worded by the
 * router every other time (describe_failure). The
 * checks: nothing crashes or leaks, ASan sees no bad access, a closed
 * endpoint is never written to, the relay always finishes when both sides
 * are closed, and each request that went to a back is reported
 * (on_exchange) exactly once, a retried one after its last attempt. */
#include "relay.h"

#include <stdio.h>

typedef struct fake_ep {
  int closed, shut;
  uint64_t written;
  unsigned accept_pattern; /* how much of each write to take */
  unsigned calls;
} fake_ep_t;

static fake_ep_t front_ep, back_ep;
static kp__relay_t *relay;
static int relay_done, back_attached;
/* Backs attached, retries accepted, exchanges reported: each request that
 * went to a back is reported once, after any retry. */
static unsigned attaches, retried, exchanges;

static int64_t fake_write(void *h, const uint8_t *p, size_t n) {
  fake_ep_t *e = h;
  size_t take;
  if (e->closed || e->shut) abort(); /* writing to a finished endpoint */
  e->calls++;
  switch ((e->accept_pattern + e->calls) % 4) {
  case 0: take = 0; break;
  case 1: take = n / 2; break;
  default: take = n; break;
  }
  if (n && p == NULL) abort();
  /* Touch every byte taken: ASan checks the range is live. */
  for (size_t i = 0; i < take; i++) e->written += p[i] == 0xff;
  e->written += take;
  return (int64_t)take;
}
static void fake_read(void *h, int on) { (void)h; (void)on; }
static void fake_consumed(void *h, size_t n) { (void)h; (void)n; }
static uint64_t fake_pending(void *h) { (void)h; return 0; }
static void fake_shutdown(void *h) { ((fake_ep_t *)h)->shut = 1; }
static void fake_abort(void *h, int err) { (void)err; ((fake_ep_t *)h)->closed = 1; }

/* Shaped like the two real endpoints: a conn can pause and has a queue but
 * nothing to give back; a stream cannot pause but returns window. The
 * relay must only call what an endpoint has. */
static const kp__ep_ops_t conn_like = {
    .write = fake_write, .read = fake_read, .consumed = NULL,
    .pending = fake_pending, .shutdown = fake_shutdown, .abort = fake_abort,
};
static const kp__ep_ops_t stream_like = {
    .write = fake_write, .read = NULL, .consumed = fake_consumed,
    .pending = NULL, .shutdown = fake_shutdown, .abort = fake_abort,
};
static const kp__ep_ops_t *front_ops, *back_ops;

static void check_moved_head(const kp_http_head_t *h, size_t head_len,
                             const uint8_t *bytes, size_t len) {
  static kp_http_head_t again;
  size_t i;
  if (h == NULL || bytes == NULL || head_len > len ||
      kp_http_parse_request(bytes, head_len, 0, &again) != (int)head_len)
    abort();
  if (h->method != again.method || h->method_len != again.method_len ||
      h->target != again.target || h->target_len != again.target_len ||
      h->num_headers != again.num_headers || h->flags != again.flags ||
      h->content_length != again.content_length)
    abort();
  for (i = 0; i < h->num_headers; i++)
    if (h->headers[i].name != again.headers[i].name ||
        h->headers[i].name_len != again.headers[i].name_len ||
        h->headers[i].value != again.headers[i].value ||
        h->headers[i].value_len != again.headers[i].value_len)
      abort();
}

static void on_request(kp__relay_t *r, const kp_http_head_t *head,
                       const uint8_t *raw, size_t raw_len) {
  size_t len;
  uint8_t *req;
  (void)raw;
  switch (raw_len % 3) {
  case 0: {
    kp__ep_t back = {back_ops, &back_ep};
    req = kp_http_build_request(head, "/x", 2, NULL, "X: y\r\n", 6, &len);
    if (req == NULL) abort();
    memset(&back_ep, 0, sizeof(back_ep));
    back_ep.accept_pattern = (unsigned)raw_len;
    back_attached = 1;
    attaches++;
    if (raw_len & 16) {
      kp__relay_attach_owned(r, back, req, len); /* the relay frees it */
    } else {
      kp__relay_attach(r, back, req, len);
      free(req);
    }
    break;
  }
  case 1: {
    static const char body[] = "{\"kind\":\"Status\"}";
    uint8_t *resp = kp__http_build_response(404, "Not Found", "application/json",
                                            body, sizeof(body) - 1, raw_len & 4, &len);
    kp__relay_respond(r, resp, len, raw_len & 4);
    free(resp);
    break;
  }
  default: {
    uint8_t *rest;
    size_t rest_len, head_len;
    kp_http_head_t *moved;
    if (raw_len & 8) {
      (void)kp__relay_take_front(r, &rest, &rest_len);
      free(rest);
      break;
    }
    /* Taken with its request (as to another loop): the head handed over
     * must be the one a fresh parse of the bytes handed over gives, field
     * by field and pointer by pointer. */
    if (kp__relay_take_request(r, &moved, &head_len, &rest, &rest_len) == 0)
      check_moved_head(moved, head_len, rest, rest_len);
    free(moved);
    free(rest);
    break;
  }
  }
}

static void release_back(kp__relay_t *r, kp__ep_t back,
                         kp__relay_back_end_t how) {
  (void)r;
  if (how != KP__RELAY_BACK_FAILED && how != KP__RELAY_BACK_DONE &&
      how != KP__RELAY_BACK_REUSABLE)
    abort();
  ((fake_ep_t *)back.h)->closed = 1;
  back_attached = 0;
}

/* A back that ended before the response began: every other time, attach a
 * fresh one at once (from inside the callback, the hardest case: the relay
 * may be in its pump), else refuse and let the relay answer 502. */
static unsigned retries;
static int retry(kp__relay_t *r, int err) {
  kp__ep_t back = {back_ops, &back_ep};
  static const uint8_t head[] = "GET /again HTTP/1.1\r\nHost: x\r\n\r\n";
  (void)err;
  if (back_attached) abort(); /* the old back must be gone */
  if (retries++ % 2) return 0;
  memset(&back_ep, 0, sizeof(back_ep));
  back_ep.accept_pattern = retries;
  back_attached = 1;
  attaches++;
  retried++;
  kp__relay_attach(r, back, head, sizeof(head) - 1);
  return 1;
}

static void on_exchange(kp__relay_t *r, int status, uint64_t up,
                        uint64_t down) {
  (void)r;
  (void)up;
  (void)down;
  if (status < 0 || status > 999) abort();
  if (++exchanges > attaches - retried) abort(); /* reported twice */
}

/* The 502's message from the router every other time (a forward names the
 * replica), the relay's own otherwise. */
static unsigned describes;
static int describe_failure(kp__relay_t *r, int err, char *buf, size_t len) {
  (void)r;
  if (describes++ % 2) return 0;
  snprintf(buf, len, "replica fuzz:1 unreachable: %s", kp_strerror(err));
  return 1;
}

static void on_done(kp__relay_t *r) {
  (void)r;
  relay_done = 1;
  relay = NULL;
}

static const kp__relay_router_t router = {
    .on_request = on_request,
    .release_back = release_back,
    .retry = retry,
    .on_exchange = on_exchange,
    .describe_failure = describe_failure,
    .on_done = on_done,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  kp__relay_config_t cfg = {1024, 0};
  kp__ep_t front;
  size_t split, fi = 0, bi, step = 0;
  if (size < 2) return 0;
  split = 1 + data[0] % (size - 1);
  bi = split;
  memset(&front_ep, 0, sizeof(front_ep));
  memset(&back_ep, 0, sizeof(back_ep));
  front_ep.accept_pattern = data[1];
  /* The hub's shape (conn front, stream back) or the agent's (stream
   * front, conn back), from the input. */
  front_ops = (data[1] & 0x80) ? &stream_like : &conn_like;
  back_ops = (data[1] & 0x80) ? &conn_like : &stream_like;
  front.ops = front_ops;
  front.h = &front_ep;
  relay_done = 0;
  back_attached = 0;
  retries = 0;
  attaches = retried = exchanges = 0;
  if (kp__relay_new(&relay, front, &router, &cfg, NULL) != 0) return 0;
  while (relay && (fi < split || bi < size)) {
    size_t n;
    kp_chunk_t *c;
    int to_front = (step++ & 1) ? fi < split : bi >= size;
    size_t start = to_front ? fi : bi, end = to_front ? split : size;
    n = 1 + data[start] % 97;
    if (n > end - start) n = end - start;
    c = kp_chunk_new(n);
    memcpy(kp_chunk_data(c), data + start, n);
    if (to_front) {
      fi += n;
      if (!front_ep.closed) kp__relay_front_data(relay, kp_chunk_data(c), n, c);
    } else {
      bi += n;
      /* Two marker bytes end the back early: EOF, or gone (reset). */
      if (back_attached && data[start] == 0xfd) {
        kp__relay_back_eof(relay);
      } else if (back_attached && data[start] == 0xfe) {
        back_attached = 0;
        back_ep.closed = 1;
        kp__relay_back_closed(relay, KP_ECLOSED);
      } else if (back_attached) {
        kp__relay_back_data(relay, kp_chunk_data(c), n, c);
      }
    }
    kp_chunk_unref(c);
    if (relay) kp__relay_writable(relay);
  }
  /* Both ends go away: the relay must finish and free everything. */
  if (relay && back_attached) kp__relay_back_eof(relay);
  if (relay && back_attached) {
    back_attached = 0;
    back_ep.closed = 1;
    kp__relay_back_closed(relay, KP_ECLOSED);
  }
  if (relay) kp__relay_front_eof(relay);
  if (relay && !front_ep.closed) kp__relay_front_closed(relay, KP_ECLOSED);
  if (!relay_done) abort();
  if (exchanges != attaches - retried) abort(); /* one went unreported */
  return 0;
}
