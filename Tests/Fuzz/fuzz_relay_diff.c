/* fuzz_relay_diff.c - differential: the hub's relay against the agent's.
 *
 * The input (after one byte that picks the read sizes) is what a caller
 * pipelines on one connection. It goes through a relay shaped like the
 * hub's front (a conn in front, one fresh mux-stream back per request, the
 * head rebuilt with the hub's drop list), whose router lets every request
 * through unless its rebuilt head would not fit the next hop (431 then, as
 * the hub answers); each back answers "200, empty" once the whole input has
 * arrived, so the relay goes on to the next request. What each hub back
 * received is then fed to a relay shaped like the agent's (a stream in
 * front, a conn back, its own head rebuild), as the member would see it.
 *
 * The oracle is the one smuggling is about, and needs no model of HTTP:
 *  - every hub back carries exactly one request: the agent parses exactly
 *    one request from it, never zero (a head the hub wrote that the next
 *    hop cannot read) and never two (a request the hub never authorized);
 *  - that request has the method and target the hub parsed and authorized;
 *  - the agent relays exactly the body bytes the hub relayed;
 *  - where the hub saw the request end at a clean boundary (it would hand
 *    its back to the next request), the agent agrees: a request written
 *    right after those bytes is the agent's next request, whole.
 * And as in fuzz_relay: nothing crashes, leaks or touches freed memory. */
#include "relay.h"

#include <stdio.h>
#include <string.h>

#define MAXREQ 32

typedef struct rec {
  uint8_t *p;
  size_t len, cap;
} rec_t;

static void rec_add(rec_t *r, const uint8_t *p, size_t n) {
  if (r->len + n > r->cap) {
    size_t cap = r->cap ? r->cap : 256;
    while (cap < r->len + n) cap *= 2;
    r->p = realloc(r->p, cap);
    if (r->p == NULL) abort();
    r->cap = cap;
  }
  memcpy(r->p + r->len, p, n);
  r->len += n;
}

/* An endpoint that takes every byte and keeps them. */
typedef struct ep {
  rec_t got;
  int closed, shut, attached;
  kp__relay_back_end_t how;
} ep_t;

static int64_t ep_write(void *h, const uint8_t *p, size_t n) {
  ep_t *e = h;
  if (e->closed || e->shut) abort(); /* a finished endpoint written to */
  rec_add(&e->got, p, n);
  return (int64_t)n;
}
static void ep_read(void *h, int on) { (void)h; (void)on; }
static void ep_consumed(void *h, size_t n) { (void)h; (void)n; }
static uint64_t ep_pending(void *h) { (void)h; return 0; }
static void ep_shutdown(void *h) { ((ep_t *)h)->shut = 1; }
static void ep_abort(void *h, int err) { (void)err; ((ep_t *)h)->closed = 1; }

static const kp__ep_ops_t conn_like = {
    .write = ep_write, .read = ep_read, .consumed = NULL,
    .pending = ep_pending, .shutdown = ep_shutdown, .abort = ep_abort,
};
static const kp__ep_ops_t stream_like = {
    .write = ep_write, .read = NULL, .consumed = ep_consumed,
    .pending = NULL, .shutdown = ep_shutdown, .abort = ep_abort,
};

/* What one side parsed: each request's method and target, and the bytes
 * its back received (head length noted, so the body can be cut out). */
typedef struct side {
  kp__relay_t *relay;
  int done;
  ep_t front;
  ep_t backs[MAXREQ];
  size_t head_len[MAXREQ];
  rec_t method[MAXREQ], target[MAXREQ];
  int n;       /* requests parsed */
  int current; /* the back attached now, or -1 */
  int agent;   /* the agent's shape and rebuild */
} side_t;

static void side_on_request(kp__relay_t *r, const kp_http_head_t *head,
                            const uint8_t *raw, size_t raw_len) {
  side_t *s = kp__relay_user_data(r);
  static const char *const hub_drop[] = {"authorization", "x-forwarded-for",
                                         "x-forwarded-proto",
                                         "kopilot-forwarded-by",
                                         KP_HTTP_DROP_IDENTITY, NULL};
  static const char *const agent_drop[] = {"authorization", "host", NULL};
  static const char hub_extra[] = "X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: https\r\n";
  static const char agent_extra[] = "Host: upstream:6443\r\nAuthorization: Bearer sa\r\n";
  kp__ep_t back;
  uint8_t *req;
  size_t len;
  int k = s->n;
  (void)raw;
  (void)raw_len;
  if (k == MAXREQ) {
    static const char msg[] = "HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n";
    kp__relay_respond(r, (const uint8_t *)msg, sizeof(msg) - 1, 1);
    return;
  }
  if (s->agent)
    req = kp_http_build_request(head, head->target, head->target_len, agent_drop,
                                agent_extra, sizeof(agent_extra) - 1, &len);
  else
    req = kp_http_build_request(head, head->target, head->target_len, hub_drop,
                                hub_extra, sizeof(hub_extra) - 1, &len);
  if (req == NULL) abort();
  if (!s->agent && !kp__http_head_fits(req, len)) {
    /* As the hub: a head its own fields push past what the next hop
     * reads is refused here, and nothing goes on. */
    static const char msg[] = "HTTP/1.1 431 Too Large\r\nContent-Length: 0\r\n\r\n";
    free(req);
    kp__relay_respond(r, (const uint8_t *)msg, sizeof(msg) - 1, 0);
    return;
  }
  s->n++;
  rec_add(&s->method[k], (const uint8_t *)head->method, head->method_len);
  rec_add(&s->target[k], (const uint8_t *)head->target, head->target_len);
  s->head_len[k] = len;
  s->backs[k].attached = 1;
  s->current = k;
  back.ops = s->agent ? &conn_like : &stream_like;
  back.h = &s->backs[k];
  kp__relay_attach(r, back, req, len);
  free(req);
}

static void side_release_back(kp__relay_t *r, kp__ep_t back,
                              kp__relay_back_end_t how) {
  side_t *s = kp__relay_user_data(r);
  ep_t *e = back.h;
  if (!e->attached) abort(); /* released twice */
  e->attached = 0;
  e->closed = 1;
  e->how = how;
  if (s->current >= 0 && &s->backs[s->current] == e) s->current = -1;
}

static void side_on_done(kp__relay_t *r) {
  side_t *s = kp__relay_user_data(r);
  s->done = 1;
  s->relay = NULL;
}

static const kp__relay_router_t side_router = {
    .on_request = side_on_request,
    .release_back = side_release_back,
    .on_done = side_on_done,
};

static void side_free(side_t *s) {
  int i;
  free(s->front.got.p);
  for (i = 0; i < MAXREQ; i++) {
    free(s->backs[i].got.p);
    free(s->method[i].p);
    free(s->target[i].p);
  }
}

static void side_start(side_t *s, int agent) {
  kp__relay_config_t cfg = {4096, 0};
  kp__ep_t front;
  memset(s, 0, sizeof(*s));
  s->agent = agent;
  s->current = -1;
  front.ops = agent ? &stream_like : &conn_like;
  front.h = &s->front;
  if (kp__relay_new(&s->relay, front, &side_router, &cfg, s) != 0) abort();
}

/* Feeds bytes in reads of 1 to 64+ bytes, sizes from `pattern`. */
static void side_feed(side_t *s, const uint8_t *p, size_t n, uint8_t pattern) {
  size_t off = 0, i = 0;
  while (off < n && s->relay) {
    size_t k = 1 + (size_t)((pattern * 31u + i++ * 17u) % 67u);
    kp_chunk_t *c;
    if (k > n - off) k = n - off;
    c = kp_chunk_new(k);
    if (c == NULL) abort();
    memcpy(kp_chunk_data(c), p + off, k);
    kp__relay_front_data(s->relay, kp_chunk_data(c), k, c);
    kp_chunk_unref(c);
    off += k;
    if (s->relay) kp__relay_writable(s->relay);
  }
}

static const uint8_t ok[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

/* The current back answers; returns 0 when no back was attached. */
static int side_answer(side_t *s) {
  kp_chunk_t *c;
  if (s->relay == NULL || s->current < 0) return 0;
  c = kp_chunk_new(sizeof(ok) - 1);
  if (c == NULL) abort();
  memcpy(kp_chunk_data(c), ok, sizeof(ok) - 1);
  kp__relay_back_data(s->relay, kp_chunk_data(c), sizeof(ok) - 1, c);
  kp_chunk_unref(c);
  return 1;
}

static void side_end(side_t *s) {
  if (s->relay && s->current >= 0) {
    ep_t *e = &s->backs[s->current];
    kp__relay_back_eof(s->relay);
    if (s->relay && e->attached) {
      e->attached = 0;
      e->closed = 1;
      s->current = -1;
      kp__relay_back_closed(s->relay, KP_ECLOSED);
    }
  }
  if (s->relay) kp__relay_front_eof(s->relay);
  if (s->relay && !s->front.closed) kp__relay_front_closed(s->relay, KP_ECLOSED);
  if (!s->done) abort(); /* a relay that did not finish */
}

static int same(const rec_t *a, const uint8_t *p, size_t n) {
  return a->len == n && (n == 0 || memcmp(a->p, p, n) == 0);
}

static void fail(const char *what, int k) {
  fprintf(stderr, "relay_diff: request %d: %s\n", k, what);
  abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static side_t hub, agent;
  static const char sentinel[] = "GET /sentinel HTTP/1.1\r\nHost: s\r\n\r\n";
  int k, rounds;
  if (size < 2 || size > 65536) return 0;
  side_start(&hub, 0);
  side_feed(&hub, data + 1, size - 1, data[0]);
  /* Every request gets its answer, so the hub reads the next. */
  for (rounds = 0; rounds <= MAXREQ && side_answer(&hub); rounds++) {
  }
  side_end(&hub);

  for (k = 0; k < hub.n; k++) {
    ep_t *hb = &hub.backs[k];
    const uint8_t *hub_body = hb->got.p + hub.head_len[k];
    size_t hub_body_len = hb->got.len - hub.head_len[k];
    int boundary = hb->how == KP__RELAY_BACK_REUSABLE;
    if (hb->got.len < hub.head_len[k]) fail("the hub's head did not all go out", k);
    side_start(&agent, 1);
    side_feed(&agent, hb->got.p, hb->got.len, data[0] ^ (uint8_t)k);
    if (agent.n != 1) fail(agent.n ? "the agent parsed more than one request"
                                   : "the agent parsed no request from the hub's head", k);
    if (!same(&agent.method[0], hub.method[k].p, hub.method[k].len))
      fail("the agent parsed another method", k);
    if (!same(&agent.target[0], hub.target[k].p, hub.target[k].len))
      fail("the agent parsed another target", k);
    if (boundary) {
      /* The hub saw the request end exactly here: the agent must too. */
      side_answer(&agent);
      side_feed(&agent, (const uint8_t *)sentinel, sizeof(sentinel) - 1, 7);
      if (agent.n != 2 || !same(&agent.target[1], (const uint8_t *)"/sentinel", 9))
        fail("the agent saw the request end elsewhere than the hub", k);
    }
    {
      ep_t *ab = &agent.backs[0];
      if (ab->got.len < agent.head_len[0] ||
          !same(&(rec_t){ab->got.p + agent.head_len[0], ab->got.len - agent.head_len[0], 0},
                hub_body, hub_body_len))
        fail("the agent relayed other body bytes than the hub", k);
    }
    side_end(&agent);
    side_free(&agent);
  }
  side_free(&hub);
  return 0;
}
