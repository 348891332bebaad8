/* relay.c - HTTP/1.1 relaying between a front and a back end. See relay.h. */
#include "relay.h"

#include <stdio.h>

/* Per-direction states. */
enum {
  ST_HEAD,  /* collecting a head */
  ST_BODY,  /* relaying (or dropping) a body */
  ST_WAIT,  /* request sent; waiting for the response to finish */
  ST_RAW,   /* after a 101: bytes as they come */
  ST_DONE   /* nothing more flows this way */
};

typedef struct qnode {
  struct qnode *next;
  kp_slice_t s; /* holds a chunk reference when s.chunk != NULL */
  int copy;     /* s.chunk is the relay's own copy: more may be appended */
} qnode_t;

/* A slice this small (or borrowed bytes) is copied rather than referenced:
 * a peer that sends one byte per read (or per mux frame) would otherwise
 * pin a whole read chunk per byte, and the flow-control windows bound
 * bytes, not chunks. Copies are appended to the queue's last copy, so
 * queued small slices take about as much memory as their bytes. */
#define RELAY_COPY_MAX (KP_CHUNK_SIZE / 16)

/* While this much of the caller's responses is unsent, no further
 * pipelined request is read: a caller that sends requests and never reads
 * cannot make the hub queue answers without bound. The head deadline the
 * router armed for the next request then closes it. */
#define RELAY_ANSWER_BOUND (256u << 10)

/* A conn destination (a caller, an upstream) with this much queued stops
 * its source. The kernel's socket buffer holds the bytes in flight, so
 * this only has to cover one loop turn; more is memory a slow reader pins
 * (and lets a stream window grow for a reader that is not keeping up). */
#define RELAY_HIGH_WATER (128u << 10)

typedef struct dir {
  int state;
  int from_front; /* source is the front */
  qnode_t *qh, *qt;
  uint8_t *hbuf;
  size_t hlen, hcap;
  kp_http_body_t body;
  int drop;     /* body bytes are dropped, not relayed */
  /* Body bytes at the head of the queue that the scanner already counted
   * but the destination has not taken yet: they must not be scanned twice. */
  size_t scanned;
  int have_scan;
  /* Bytes the relay itself produced (a head, a local response) that must
   * reach the destination before anything more from the queue. A stream
   * may take fewer bytes than offered (window, congested session), so
   * these wait here like any other. */
  uint8_t *out;
  size_t out_len, out_off;
  int src_eof;  /* the source has no more bytes */
  int paused;   /* we stopped the source's reads */
} dir_t;

struct kp__relay {
  kp__ep_t front, back;
  int has_back;
  const kp__relay_router_t *router;
  void *ud;
  size_t max_head;
  uint64_t high_water;
  dir_t req, resp;
  int deciding;      /* on_request was called, no answer yet */
  int req_keep_alive, resp_keep_alive;
  int req_http11;    /* the request is HTTP/1.1 (its head goes out as such) */
  int req_bodyless;  /* the request has no body: it can be sent again */
  int resp_seen;     /* a byte of the response came from the current back */
  int req_head;      /* the request is HEAD */
  int upgrade_asked; /* the request asked for an upgrade */
  int close_after;   /* end the front once the response is out */
  int front_closed, done, in_pump;
  int front_shut;
  int want_front_shut; /* shut once the response bytes are all out */
  int resp_status;      /* of the current exchange, 0 until its head */
  uint64_t bytes_up, bytes_down;
  /* The current request's head, parsed once (request_head, or taken over
   * with kp__relay_resume), pointing into req.hbuf: the router reads it
   * while deciding and again for a retry. Allocated per request (a
   * connection between requests holds none) and freed when it is over. */
  kp_http_head_t *head;
};

static void pump(kp__relay_t *r);

int kp__relay_new(kp__relay_t **out, kp__ep_t front,
                  const kp__relay_router_t *router,
                  const kp__relay_config_t *cfg, void *ud) {
  kp__relay_t *r = calloc(1, sizeof(*r));
  if (r == NULL) return KP_ENOMEM;
  r->front = front;
  r->router = router;
  r->ud = ud;
  r->max_head = cfg && cfg->max_head ? cfg->max_head : KP_HTTP_DEFAULT_MAX_HEAD;
  r->high_water = cfg && cfg->high_water ? cfg->high_water : RELAY_HIGH_WATER;
  r->req.from_front = 1;
  r->req.state = ST_HEAD;
  r->resp.state = ST_DONE;
  *out = r;
  return 0;
}

void *kp__relay_user_data(kp__relay_t *r) { return r->ud; }

/* ---- queues ---- */

static int q_push(dir_t *d, const uint8_t *p, size_t n, kp_chunk_t *chunk,
                  int front_of_queue) {
  qnode_t *q, *t = d->qt;
  if (!front_of_queue && (chunk == NULL || n <= RELAY_COPY_MAX) && t != NULL &&
      t->copy && t->s.base + t->s.len + n <=
                     kp_chunk_data(t->s.chunk) + kp_chunk_capacity(t->s.chunk)) {
    memcpy(t->s.base + t->s.len, p, n);
    t->s.len += n;
    return 0;
  }
  q = malloc(sizeof(*q));
  if (q == NULL) return KP_ENOMEM;
  q->copy = 0;
  if (chunk != NULL && n <= RELAY_COPY_MAX && !front_of_queue) chunk = NULL;
  if (chunk == NULL) {
    q->copy = 1;
    /* Borrowed bytes: keep a copy. */
    chunk = kp_chunk_new(n);
    if (chunk == NULL) {
      free(q);
      return KP_ENOMEM;
    }
    memcpy(kp_chunk_data(chunk), p, n);
    p = kp_chunk_data(chunk);
  } else {
    kp_chunk_ref(chunk);
  }
  q->s.chunk = chunk;
  q->s.base = (uint8_t *)p;
  q->s.len = n;
  if (front_of_queue) {
    q->next = d->qh;
    d->qh = q;
    if (d->qt == NULL) d->qt = q;
  } else {
    q->next = NULL;
    if (d->qt) d->qt->next = q;
    else d->qh = q;
    d->qt = q;
  }
  return 0;
}

static void q_pop(dir_t *d) {
  qnode_t *q = d->qh;
  d->qh = q->next;
  if (d->qh == NULL) d->qt = NULL;
  kp_chunk_unref(q->s.chunk);
  free(q);
}

static void q_clear(dir_t *d) {
  while (d->qh) q_pop(d);
  d->have_scan = 0;
  d->scanned = 0;
}

static int out_add(dir_t *d, const uint8_t *p, size_t n) {
  uint8_t *nb;
  if (n == 0) return 0;
  nb = realloc(d->out, d->out_len + n);
  if (nb == NULL) return KP_ENOMEM;
  memcpy(nb + d->out_len, p, n);
  d->out = nb;
  d->out_len += n;
  return 0;
}

static void out_clear(dir_t *d) {
  free(d->out);
  d->out = NULL;
  d->out_len = d->out_off = 0;
}

static kp__ep_t *src_of(kp__relay_t *r, dir_t *d) {
  return d->from_front ? &r->front : &r->back;
}
static kp__ep_t *dst_of(kp__relay_t *r, dir_t *d) {
  return d->from_front ? &r->back : &r->front;
}
static int dst_ok(kp__relay_t *r, dir_t *d) {
  return d->from_front ? r->has_back : !r->front_closed;
}
static int src_ok(kp__relay_t *r, dir_t *d) {
  return d->from_front ? !r->front_closed : r->has_back;
}

static void consumed(kp__relay_t *r, dir_t *d, size_t n) {
  kp__ep_t *s = src_of(r, d);
  if (n && src_ok(r, d) && s->ops->consumed) s->ops->consumed(s->h, n);
}

/* The destination took less than offered: the source is told (a stream's
 * window then stops growing, see kp_mux_stream_reader_held). */
static void held(kp__relay_t *r, dir_t *d) {
  kp__ep_t *s = src_of(r, d);
  if (src_ok(r, d) && s->ops->held) s->ops->held(s->h);
}

static void set_paused(kp__relay_t *r, dir_t *d, int paused) {
  kp__ep_t *s = src_of(r, d);
  if (d->paused == paused || !src_ok(r, d)) return;
  d->paused = paused;
  if (s->ops->read) s->ops->read(s->h, !paused);
}

/* ---- endings ---- */

static void finish(kp__relay_t *r) {
  if (r->done || r->in_pump) return;
  if (!r->front_closed || r->has_back) return;
  r->done = 1;
  q_clear(&r->req);
  q_clear(&r->resp);
  free(r->req.hbuf);
  free(r->resp.hbuf);
  free(r->head);
  out_clear(&r->req);
  out_clear(&r->resp);
  if (r->router->on_done) r->router->on_done(r);
  free(r);
}

/* Reports the current request's exchange with its back(s): once, after
 * any retry, with the bytes of every attempt. */
static void report(kp__relay_t *r) {
  int status = r->resp_status;
  uint64_t up = r->bytes_up, down = r->bytes_down;
  r->resp_status = 0;
  r->bytes_up = r->bytes_down = 0;
  if (r->router->on_exchange) r->router->on_exchange(r, status, up, down);
}

/* Gives the back to the router without reporting: a back that ended
 * before the response began may be followed by a retry, whose exchange
 * the report covers too (see after_eof, kp__relay_back_closed). */
static void release_back_unreported(kp__relay_t *r, kp__relay_back_end_t how) {
  kp__ep_t b = r->back;
  r->has_back = 0;
  q_clear(&r->resp);
  out_clear(&r->req);
  r->resp.state = ST_DONE;
  r->resp.paused = 0;
  r->router->release_back(r, b, how);
}

static void release_back(kp__relay_t *r, kp__relay_back_end_t how) {
  if (!r->has_back) return;
  report(r);
  release_back_unreported(r, how);
}

/* The back ended before one byte of the response and is released: sends
 * the request again if the router will (the report waits for that
 * attempt), else reports and answers 502. */
static int try_again(kp__relay_t *r, int err);
static void back_failed(kp__relay_t *r, int err);
static void retry_or_fail(kp__relay_t *r, int err) {
  if (try_again(r, err)) return;
  report(r);
  back_failed(r, err);
}

void kp__relay_abort(kp__relay_t *r, int err) {
  if (r->has_back) release_back(r, KP__RELAY_BACK_FAILED);
  if (!r->front_closed) {
    r->front_closed = 1;
    q_clear(&r->req);
    r->front.ops->abort(r->front.h, err);
  }
  finish(r);
}

/* Ends the front's write side once every response byte is out. */
static void front_shutdown(kp__relay_t *r) {
  if (r->front_shut || r->front_closed) return;
  if (r->resp.out_off < r->resp.out_len) {
    r->want_front_shut = 1; /* pump_dir(resp) finishes it */
    return;
  }
  r->front_shut = 1;
  r->front.ops->shutdown(r->front.h);
}

/* The current request is over: its head goes, the next one's bytes come. */
static void request_over(kp__relay_t *r) {
  r->req.hlen = 0;
  free(r->head);
  r->head = NULL;
}

/* The response finished: the back goes back to the router, the front takes
 * its next request or ends. */
static void exchange_done(kp__relay_t *r) {
  int reusable = r->req_keep_alive && r->resp_keep_alive &&
                 r->req.state == ST_WAIT && !r->close_after;
  /* The back may take another request only at a clean boundary: the whole
   * request went out (body ended, head flushed), the response was
   * delimited (close_after covers until-close bodies and 101s), both sides
   * kept the connection, and nothing came after the response (a server
   * that sends more than it framed cannot be trusted with the next one). */
  int back_reusable = reusable && r->req_http11 && r->req.out_len == 0 &&
                      r->resp.qh == NULL && !r->resp.src_eof;
  release_back(r, back_reusable ? KP__RELAY_BACK_REUSABLE : KP__RELAY_BACK_DONE);
  if (!reusable) {
    r->req.state = ST_DONE;
    q_clear(&r->req);
    front_shutdown(r);
    return;
  }
  r->req.state = ST_HEAD;
  request_over(r);
  if (r->router->on_idle) r->router->on_idle(r);
  if (r->req.src_eof && r->req.qh == NULL) front_shutdown(r);
}

/* ---- heads ---- */

static int head_append(kp__relay_t *r, dir_t *d, const uint8_t *p, size_t n) {
  if (d->hlen + n > d->hcap) {
    size_t cap = d->hcap ? d->hcap : 4096;
    uint8_t *nb;
    while (cap < d->hlen + n) cap *= 2;
    if (cap > r->max_head + 1) cap = r->max_head + 1;
    if (d->hlen + n > cap) n = cap - d->hlen;
    nb = realloc(d->hbuf, cap);
    if (nb == NULL) return KP_ENOMEM;
    d->hbuf = nb;
    d->hcap = cap;
  }
  memcpy(d->hbuf + d->hlen, p, n);
  d->hlen += n;
  return (int)n;
}

const char *kp__http_reason(int status) {
  switch (status) {
  case 200: return "OK";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  case 508: return "Loop Detected";
  default: return "Status";
  }
}

/* A Kubernetes Status answer; the connection closes after it. */
static void respond_status(kp__relay_t *r, int status, const char *reason_word,
                           const char *message) {
  size_t len;
  uint8_t *resp = kp__http_build_status(status, reason_word, message, 1, &len);
  if (resp == NULL) {
    kp__relay_abort(r, KP_ENOMEM);
    return;
  }
  kp__relay_respond(r, resp, len, 1);
  free(resp);
}

/* A request head of head_len bytes (r->head, parsed) is at the start of
 * d->hbuf: what follows it goes back to the queue, the request's framing
 * is set up and the router is asked. */
static void begin_request(kp__relay_t *r, dir_t *d, size_t head_len) {
  const kp_http_head_t *head = r->head;
  const char *nm;
  size_t nl;
  /* Bytes past the head go back to the front of the queue. */
  if (head_len < d->hlen) {
    if (q_push(d, d->hbuf + head_len, d->hlen - head_len, NULL, 1) != 0) {
      kp__relay_abort(r, KP_ENOMEM);
      return;
    }
  }
  d->hlen = head_len;
  if (kp_http_connection_names_protected(head, &nm, &nl)) {
    char msg[160];
    snprintf(msg, sizeof(msg),
             "the Connection header may not name %.*s: framing, Host, "
             "credentials and identity fields are not hop-by-hop here",
             (int)(nl > 64 ? 64 : nl), nm);
    d->state = ST_DONE;
    q_clear(d);
    respond_status(r, 400, "BadRequest", msg);
    return;
  }
  r->req_keep_alive = (head->flags & KP_HTTP_F_KEEP_ALIVE) != 0;
  r->req_http11 = head->minor_version == 1;
  r->req_head = head->method_len == 4 && memcmp(head->method, "HEAD", 4) == 0;
  r->upgrade_asked = (head->flags & KP_HTTP_F_UPGRADE) != 0;
  r->close_after = 0;
  r->resp_status = 0;
  r->bytes_up = r->bytes_down = 0;
  kp_http_body_init(&d->body, head, 1, 0);
  /* Neither chunked nor a Content-Length but 0 (RFC 9112 6.3). */
  r->req_bodyless = d->body.done;
  d->have_scan = 0;
  d->drop = 0;
  d->state = ST_BODY;
  r->deciding = 1;
  set_paused(r, d, 1);
  r->router->on_request(r, head, d->hbuf, head_len);
}

/* Returns 1 when the head is complete and was handled, 0 to wait. */
static int request_head(kp__relay_t *r, dir_t *d) {
  int rc;
  if (r->head == NULL && (r->head = malloc(sizeof(*r->head))) == NULL) {
    kp__relay_abort(r, KP_ENOMEM);
    return 1;
  }
  rc = kp_http_parse_request(d->hbuf, d->hlen, r->max_head, r->head);
  if (rc == KP_EAGAIN) return 0;
  if (rc < 0) {
    d->state = ST_DONE;
    q_clear(d);
    if (rc == KP_EHEADTOOBIG)
      respond_status(r, 431, "RequestHeaderFieldsTooLarge",
                     "request head too large");
    else
      respond_status(r, 400, "BadRequest", "malformed HTTP request");
    return 1;
  }
  begin_request(r, d, (size_t)rc);
  return 1;
}

static int response_head(kp__relay_t *r, dir_t *d) {
  kp_http_head_t head;
  int rc = kp_http_parse_response(d->hbuf, d->hlen, r->max_head, &head);
  if (rc == KP_EAGAIN) return 0;
  if (rc < 0) {
    release_back(r, KP__RELAY_BACK_FAILED);
    respond_status(r, 502, "BadGateway", "malformed response from the member cluster");
    return 1;
  }
  if ((size_t)rc < d->hlen &&
      q_push(d, d->hbuf + rc, d->hlen - (size_t)rc, NULL, 1) != 0) {
    kp__relay_abort(r, KP_ENOMEM);
    return 1;
  }
  d->hlen = 0;
  if (out_add(d, d->hbuf, (size_t)rc) != 0) {
    kp__relay_abort(r, KP_ENOMEM);
    return 1;
  }
  if (head.status >= 100 && head.status < 200 && head.status != 101)
    return 1; /* interim (100 Continue): forwarded; the final head follows */
  r->resp_keep_alive = (head.flags & KP_HTTP_F_KEEP_ALIVE) != 0;
  r->resp_status = head.status;
  if (r->router->on_response) r->router->on_response(r, head.status);
  if (head.status == 101 && r->upgrade_asked) {
    d->state = ST_RAW;
    r->req.state = ST_RAW;
    r->close_after = 1;
    return 1;
  }
  kp_http_body_init(&d->body, &head, 0, r->req_head);
  d->have_scan = 0;
  d->state = ST_BODY;
  if (d->body.mode == KP_HTTP_BODY_UNTIL_CLOSE) r->close_after = 1;
  if (d->body.done) {
    d->state = ST_DONE;
    exchange_done(r);
  }
  return 1;
}

/* ---- the pump ---- */

static void body_end(kp__relay_t *r, dir_t *d) {
  if (d->from_front) {
    d->state = ST_WAIT;
    /* An answered request whose body we dropped: ready for the next. */
    if (!r->has_back && r->resp.state == ST_DONE && !r->deciding) {
      if (r->close_after) {
        d->state = ST_DONE;
        q_clear(d);
        front_shutdown(r);
      } else {
        d->state = ST_HEAD;
        request_over(r);
        if (r->router->on_idle) r->router->on_idle(r);
      }
    }
  } else {
    d->state = ST_DONE;
    exchange_done(r);
  }
}

/* Moves one direction forward as far as it can. Returns 1 if it did
 * anything. */
static int pump_dir(kp__relay_t *r, dir_t *d) {
  int moved = 0;
  /* A front that was closed or taken (e.g. by an agent session) is not
   * ours any more, and neither is anything queued from it. */
  if (d->from_front && r->front_closed) return 0;
  if (d->out_off < d->out_len) {
    kp__ep_t *dst = dst_of(r, d);
    int64_t taken;
    if (!dst_ok(r, d)) {
      out_clear(d);
    } else {
      taken = dst->ops->write(dst->h, d->out + d->out_off, d->out_len - d->out_off);
      if (taken < 0) {
        kp__relay_abort(r, (int)taken);
        return 1;
      }
      d->out_off += (size_t)taken;
      if (d->from_front) r->bytes_up += (uint64_t)taken;
      else r->bytes_down += (uint64_t)taken;
      if (taken > 0) moved = 1;
      if (d->out_off < d->out_len) {
        set_paused(r, d, 1);
        return moved; /* kp__relay_writable resumes */
      }
      out_clear(d);
    }
  }
  if (!d->from_front && r->want_front_shut && !r->front_shut) {
    r->want_front_shut = 0;
    front_shutdown(r);
    moved = 1;
  }
  while (d->qh != NULL && !r->done && !(d->from_front && r->front_closed)) {
    qnode_t *q = d->qh;
    if (d->state == ST_HEAD) {
      int n;
      if (d->from_front && r->front.ops->pending &&
          r->front.ops->pending(r->front.h) > RELAY_ANSWER_BOUND)
        break; /* kp__relay_writable resumes once answers drain */
      n = head_append(r, d, q->s.base, q->s.len);
      if (n < 0) {
        kp__relay_abort(r, n);
        return 1;
      }
      consumed(r, d, (size_t)n);
      q->s.base += n;
      q->s.len -= (size_t)n;
      if (q->s.len == 0) q_pop(d);
      moved = 1;
      if (d->from_front ? request_head(r, d) : response_head(r, d)) {
        if (d->out_off < d->out_len) return 1; /* pump again: flush it first */
        continue;
      }
      if (d->hlen > r->max_head) {
        /* Cannot be: parse says EHEADTOOBIG first. */
        kp__relay_abort(r, KP_EHEADTOOBIG);
        return 1;
      }
      continue;
    }
    if (d->state == ST_BODY || d->state == ST_RAW) {
      size_t n = q->s.len;
      int64_t taken;
      /* Nothing of a body is looked at before the router has decided:
       * its answer (a back, or a response) settles what the body is for. */
      if (d->from_front && r->deciding) break;
      if (d->state == ST_BODY && d->have_scan) {
        n = d->scanned;
      } else if (d->state == ST_BODY) {
        int rc = kp_http_body_scan(&d->body, q->s.base, q->s.len, NULL, NULL);
        if (rc < 0) {
          if (d->from_front) {
            /* The member got part of a request that can never be finished:
             * its stream ends. The caller still gets a 400 if no byte of
             * a response has come from the member yet; once one has, only
             * closing the connection tells the truth. */
            int answered = r->has_back && r->resp_seen;
            d->state = ST_DONE;
            q_clear(d);
            if (r->has_back) release_back(r, KP__RELAY_BACK_FAILED);
            if (answered) {
              kp__relay_abort(r, KP_EBADMSG);
            } else {
              respond_status(r, 400, "BadRequest", "malformed request body");
            }
          } else {
            kp__relay_abort(r, KP_EBADMSG);
          }
          return 1;
        }
        n = (size_t)rc;
        d->scanned = n;
        d->have_scan = 1;
      }
      if (d->drop || (d->from_front && !r->has_back)) {
        taken = (int64_t)n;
      } else {
        kp__ep_t *dst = dst_of(r, d);
        if (!dst_ok(r, d)) break;
        if (dst->ops->pending && dst->ops->pending(dst->h) > r->high_water) {
          held(r, d);
          break;
        }
        taken = n ? dst->ops->write(dst->h, q->s.base, n) : 0;
        if (taken < 0) {
          kp__relay_abort(r, (int)taken);
          return 1;
        }
      }
      consumed(r, d, (size_t)taken);
      if (!d->drop && !(d->from_front && !r->has_back)) {
        if (d->from_front) r->bytes_up += (uint64_t)taken;
        else r->bytes_down += (uint64_t)taken;
      }
      q->s.base += taken;
      q->s.len -= (size_t)taken;
      if (q->s.len == 0) q_pop(d);
      /* Progress is bytes taken or a body ended: a full destination
       * that took nothing must not make the pump go round again. */
      if (taken > 0) moved = 1;
      if (d->have_scan) {
        d->scanned -= (size_t)taken;
        if (d->scanned == 0) d->have_scan = 0;
      }
      if ((size_t)taken < n) { /* destination full */
        held(r, d);
        break;
      }
      if (n == 0 && d->state == ST_BODY && !d->body.done) break; /* cannot be */
      if (d->state == ST_BODY && d->body.done && !d->have_scan) {
        body_end(r, d);
        moved = 1;
      }
      continue;
    }
    break; /* ST_WAIT or ST_DONE: hold */
  }
  /* A body may end with no bytes left to scan (Content-Length: 0). */
  if (d->from_front && r->front_closed) return 1;
  if (d->qh == NULL && d->state == ST_BODY && d->body.done &&
      !(d->from_front && r->deciding)) {
    body_end(r, d);
    moved = 1;
  }
  if (!r->done) set_paused(r, d, d->qh != NULL || d->state == ST_WAIT);
  return moved;
}

/* The back ended before one byte of the response: asks the router to send
 * the request again when that is possible. Returns 1 if it will (the relay
 * is then deciding again: kp__relay_attach follows, now or later). */
static int try_again(kp__relay_t *r, int err) {
  if (r->router->retry == NULL || r->resp_seen || !r->req_bodyless ||
      r->front_closed || r->has_back)
    return 0;
  if (r->req.state != ST_WAIT && r->req.state != ST_BODY) return 0;
  r->deciding = 1;
  if (r->router->retry(r, err)) return 1;
  r->deciding = 0;
  return 0;
}

/* The back ended before a response began: a 502, in the router's words
 * when it has some (a forward names the replica). */
static void back_failed(kp__relay_t *r, int err) {
  char msg[512];
  if (r->router->describe_failure &&
      r->router->describe_failure(r, err, msg, sizeof(msg))) {
    respond_status(r, 502, "BadGateway", msg);
    return;
  }
  respond_status(r, 502, "BadGateway",
                 err == KP_EREFUSED ? "the member cluster refused the stream"
                                    : "the tunnel closed before the response began");
}

/* Each branch changes state so that it cannot run twice; returns 1 if one
 * ran, so the pump goes round again to flush what it queued (a 502, a
 * request head attached again). */
static int after_eof(kp__relay_t *r) {
  dir_t *q = &r->req, *s = &r->resp;
  int moved = 0;
  /* Request side ended. */
  if (q->src_eof && q->qh == NULL) {
    if (q->state == ST_HEAD) {
      if (!r->has_back && s->state == ST_DONE) {
        q->state = ST_DONE;
        front_shutdown(r);
        moved = 1;
      }
    } else if (q->state == ST_RAW) {
      q->state = ST_DONE;
      if (r->has_back) r->back.ops->shutdown(r->back.h);
      moved = 1;
    } else if (q->state == ST_BODY && !q->body.done &&
               q->body.mode != KP_HTTP_BODY_NONE) {
      /* The caller went away mid-body: nothing sensible can follow. */
      kp__relay_abort(r, KP_ECLOSED);
      return 1;
    }
  }
  if (r->done) return 1;
  /* Response side ended. */
  if (s->src_eof && s->qh == NULL && r->has_back && s->state != ST_DONE) {
    moved = 1;
    if (s->state == ST_BODY && s->body.mode == KP_HTTP_BODY_UNTIL_CLOSE) {
      s->state = ST_DONE;
      r->close_after = 1;
      exchange_done(r);
    } else if (s->state == ST_RAW) {
      s->state = ST_DONE;
      front_shutdown(r);
      if (q->state == ST_DONE) release_back(r, KP__RELAY_BACK_DONE);
    } else if (s->state == ST_HEAD && s->hlen == 0 && !r->deciding) {
      release_back_unreported(r, KP__RELAY_BACK_FAILED);
      retry_or_fail(r, 0);
    } else {
      kp__relay_abort(r, KP_ECLOSED);
    }
  }
  if (!r->done && q->state == ST_DONE && s->state == ST_DONE && !r->has_back &&
      r->front_shut && q->src_eof) {
    kp__relay_abort(r, 0);
    moved = 1;
  }
  return moved;
}

static void pump(kp__relay_t *r) {
  int again = 1;
  if (r->in_pump) return;
  r->in_pump = 1;
  while (again && !r->done) {
    again = pump_dir(r, &r->req);
    if (r->done) break;
    again |= pump_dir(r, &r->resp);
    if (r->done) break;
    again |= after_eof(r);
    /* Aborted (or the front taken) with no back: nothing can move any
     * more, and an abort inside the pump cannot finish; finish() below. */
    if (r->front_closed && !r->has_back) break;
  }
  r->in_pump = 0;
  finish(r);
}

/* ---- events ---- */

void kp__relay_front_data(kp__relay_t *r, const uint8_t *p, size_t n,
                          kp_chunk_t *chunk) {
  if (r->front_closed || r->req.state == ST_DONE) {
    /* Nobody wants these bytes; a stream still needs its window back. */
    if (!r->front_closed && r->front.ops->consumed)
      r->front.ops->consumed(r->front.h, n);
    return;
  }
  if (q_push(&r->req, p, n, chunk, 0) != 0) {
    kp__relay_abort(r, KP_ENOMEM);
    return;
  }
  pump(r);
}

void kp__relay_back_data(kp__relay_t *r, const uint8_t *p, size_t n,
                         kp_chunk_t *chunk) {
  if (!r->has_back) return;
  if (n) r->resp_seen = 1;
  if (r->resp.state == ST_DONE) {
    if (r->back.ops->consumed) r->back.ops->consumed(r->back.h, n);
    return;
  }
  if (q_push(&r->resp, p, n, chunk, 0) != 0) {
    kp__relay_abort(r, KP_ENOMEM);
    return;
  }
  pump(r);
}

void kp__relay_front_eof(kp__relay_t *r) {
  r->req.src_eof = 1;
  pump(r);
}

void kp__relay_back_eof(kp__relay_t *r) {
  if (!r->has_back) return;
  r->resp.src_eof = 1;
  pump(r);
}

void kp__relay_writable(kp__relay_t *r) { pump(r); }

void kp__relay_front_closed(kp__relay_t *r, int err) {
  if (r->front_closed) return;
  r->front_closed = 1;
  q_clear(&r->req);
  if (r->has_back) release_back(r, KP__RELAY_BACK_FAILED);
  (void)err;
  finish(r);
}

void kp__relay_back_closed(kp__relay_t *r, int err) {
  if (!r->has_back) return;
  /* Treat a vanished back as an EOF that cannot be reused. */
  r->resp.src_eof = 1;
  if (r->resp.state == ST_HEAD && r->resp.hlen == 0) {
    r->has_back = 0;
    q_clear(&r->resp);
    r->resp.state = ST_DONE;
    r->resp.paused = 0;
    out_clear(&r->req); /* a head the gone back did not take */
    retry_or_fail(r, err);
    return;
  }
  /* The back is gone without a release: report the exchange here. */
  report(r);
  if (r->resp.state == ST_RAW || r->resp.state == ST_DONE) {
    r->has_back = 0;
    q_clear(&r->resp);
    r->resp.state = ST_DONE;
    if (r->req.state != ST_DONE && r->req.state != ST_HEAD) {
      r->req.state = ST_DONE;
      q_clear(&r->req);
    }
    front_shutdown(r);
    pump(r);
    return;
  }
  r->has_back = 0;
  q_clear(&r->resp);
  kp__relay_abort(r, err ? err : KP_ECLOSED);
}

/* ---- router answers ---- */

static void attach_back(kp__relay_t *r, kp__ep_t back) {
  r->deciding = 0;
  r->back = back;
  r->has_back = 1;
  r->resp.state = ST_HEAD;
  r->resp.hlen = 0;
  r->resp.src_eof = 0;
  r->resp.paused = 0;
  r->resp_seen = 0;
}

int kp__relay_attach(kp__relay_t *r, kp__ep_t back, const uint8_t *head,
                     size_t head_len) {
  attach_back(r, back);
  if (out_add(&r->req, head, head_len) != 0) {
    release_back(r, KP__RELAY_BACK_FAILED);
    kp__relay_abort(r, KP_ENOMEM);
    return KP_ENOMEM;
  }
  pump(r);
  return 0;
}

int kp__relay_attach_owned(kp__relay_t *r, kp__ep_t back, uint8_t *head,
                           size_t head_len) {
  int rc = 0;
  if (r->req.out_len != 0) { /* cannot be: the last back took its head */
    rc = kp__relay_attach(r, back, head, head_len);
    free(head);
    return rc;
  }
  attach_back(r, back);
  free(r->req.out);
  r->req.out = head;
  r->req.out_len = head_len;
  r->req.out_off = 0;
  pump(r);
  return rc;
}

void kp__relay_respond(kp__relay_t *r, const uint8_t *resp, size_t len,
                       int close_after) {
  r->deciding = 0;
  /* Attempts that ended before a response are the router's to report
   * when it answers instead of retrying (it knows why). */
  r->resp_status = 0;
  r->bytes_up = r->bytes_down = 0;
  if (close_after) r->close_after = 1;
  if (!r->req_keep_alive) r->close_after = 1;
  r->req.drop = 1;
  if (r->front_closed) return;
  if (out_add(&r->resp, resp, len) != 0) {
    kp__relay_abort(r, KP_ENOMEM);
    return;
  }
  if (r->close_after) {
    /* No reason to read the rest: end the connection after the response. */
    r->req.state = ST_DONE;
    q_clear(&r->req);
    front_shutdown(r);
  }
  pump(r);
}

/* Lets the front go, with the bytes read past the current head (and the
 * head's bytes first when with_head) copied to *out. */
static int take(kp__relay_t *r, int with_head, uint8_t **out,
                size_t *out_len) {
  size_t total = with_head ? r->req.hlen : 0, off = 0;
  qnode_t *q;
  uint8_t *buf = NULL;
  int rc = 0;
  r->deciding = 0;
  for (q = r->req.qh; q; q = q->next) total += q->s.len;
  if (total) {
    buf = malloc(total);
    if (buf != NULL) {
      if (with_head) {
        memcpy(buf, r->req.hbuf, r->req.hlen);
        off = r->req.hlen;
      }
      for (q = r->req.qh; q; q = q->next) {
        memcpy(buf + off, q->s.base, q->s.len);
        off += q->s.len;
      }
    } else {
      total = 0;
      rc = KP_ENOMEM;
    }
  }
  *out = buf;
  *out_len = total;
  q_clear(&r->req);
  r->front_closed = 1; /* no longer ours */
  return rc;
}

int kp__relay_take_front(kp__relay_t *r, uint8_t **out, size_t *out_len) {
  int rc = take(r, 0, out, out_len);
  finish(r);
  return rc;
}

int kp__relay_take_request(kp__relay_t *r, kp_http_head_t **head,
                           size_t *head_len, uint8_t **out, size_t *out_len) {
  int rc;
  *head = NULL;
  *head_len = r->req.hlen;
  rc = take(r, 1, out, out_len);
  if (rc == 0 && r->head != NULL && *out != NULL) {
    kp__http_head_rebase(r->head, r->req.hbuf, *out);
    *head = r->head;
    r->head = NULL;
  } else if (rc == 0) {
    free(*out);
    *out = NULL;
    *out_len = 0;
    rc = KP_EINVAL; /* no current request */
  }
  finish(r);
  return rc;
}

void kp__relay_resume(kp__relay_t *r, kp_http_head_t *head, size_t head_len,
                      uint8_t *bytes, size_t len) {
  free(r->req.hbuf);
  free(r->head);
  r->req.hbuf = bytes;
  r->req.hcap = r->req.hlen = len;
  r->head = head;
  /* Like a head parsed in the pump: the pump below flushes what the
   * router's answer queued, and frees the relay if it ended. */
  r->in_pump = 1;
  begin_request(r, &r->req, head_len);
  r->in_pump = 0;
  pump(r);
}

void kp__relay_front_start(kp__relay_t *r) {
  if (!r->done && !r->front_closed && !r->req.paused && r->front.ops->read)
    r->front.ops->read(r->front.h, 1);
}

const kp_http_head_t *kp__relay_current_head(kp__relay_t *r) {
  return r->head;
}

/* ---- building heads ---- */

typedef struct sbuf {
  uint8_t *p;
  size_t len, cap;
  int failed;
} sbuf_t;

static void sb_add(sbuf_t *b, const void *p, size_t n) {
  if (b->failed || n == 0) return;
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 1024;
    uint8_t *np;
    while (cap < b->len + n) cap *= 2;
    np = realloc(b->p, cap);
    if (np == NULL) {
      b->failed = 1;
      return;
    }
    b->p = np;
    b->cap = cap;
  }
  memcpy(b->p + b->len, p, n);
  b->len += n;
}
static void sb_str(sbuf_t *b, const char *s) { sb_add(b, s, strlen(s)); }

/* Is `name` listed in a Connection header of `head`? */
static int named_by_connection(const kp_http_head_t *head, const char *name,
                               size_t len) {
  return kp__headers_list(head->headers, head->num_headers, "connection",
                          name, len);
}

/* Fields never copied from the incoming head: hop-by-hop ones (RFC 9110
 * 7.6.1), and the framing ones, which kp_http_build_request writes itself. */
static const char *const not_copied[] = {
    "connection", "keep-alive", "proxy-connection", "proxy-authorization",
    "te", "trailer", "upgrade", "content-length", "transfer-encoding", NULL};

/* Does the field name match a drop entry (lower case; "x-*" by prefix)? */
static int drop_matches(const char *name, size_t len, const char *entry) {
  size_t n = strlen(entry);
  if (strcmp(entry, KP_HTTP_DROP_IDENTITY) == 0)
    return kp_http_is_identity_header(name, len);
  if (n && entry[n - 1] == '*')
    return len >= n - 1 && strncasecmp(name, entry, n - 1) == 0;
  return kp__strieq(name, len, entry);
}

uint8_t *kp_http_build_request(const kp_http_head_t *head, const char *target,
                               size_t target_len, const char *const *drop,
                               const char *extra, size_t extra_len,
                               size_t *out_len) {
  sbuf_t b = {0};
  size_t i;
  int upgrade = (head->flags & KP_HTTP_F_UPGRADE) != 0;
  char framing[64];
  sb_add(&b, head->method, head->method_len);
  sb_str(&b, " ");
  sb_add(&b, target, target_len);
  sb_str(&b, head->minor_version == 0 ? " HTTP/1.0\r\n" : " HTTP/1.1\r\n");
  for (i = 0; i < head->num_headers; i++) {
    const kp_http_header_t *h = &head->headers[i];
    const char *const *d;
    int skip = 0;
    for (d = not_copied; *d && !skip; d++)
      skip = kp__strieq(h->name, h->name_len, *d);
    /* An upgrade keeps Upgrade; Connection is written anew below. */
    if (skip && upgrade && kp__strieq(h->name, h->name_len, "upgrade")) skip = 0;
    for (d = drop; d && *d && !skip; d++)
      skip = drop_matches(h->name, h->name_len, *d);
    if (!skip && named_by_connection(head, h->name, h->name_len) &&
        !(upgrade && kp__strieq(h->name, h->name_len, "upgrade")))
      skip = 1;
    if (skip) continue;
    sb_add(&b, h->name, h->name_len);
    sb_str(&b, ": ");
    sb_add(&b, h->value, h->value_len);
    sb_str(&b, "\r\n");
  }
  if (upgrade) sb_str(&b, "Connection: Upgrade\r\n");
  /* The framing the relay will follow (RFC 9112 6.3), and nothing else. */
  if (head->flags & KP_HTTP_F_CHUNKED) {
    sb_str(&b, "Transfer-Encoding: chunked\r\n");
  } else if (head->flags & KP_HTTP_F_CONTENT_LENGTH) {
    snprintf(framing, sizeof(framing), "Content-Length: %lld\r\n",
             (long long)head->content_length);
    sb_str(&b, framing);
  }
  if (extra_len) sb_add(&b, extra, extra_len);
  sb_str(&b, "\r\n");
  if (b.failed) {
    free(b.p);
    return NULL;
  }
  *out_len = b.len;
  return b.p;
}

int kp__http_head_fits(const uint8_t *head, size_t len) {
  const uint8_t *p = head, *end = head + len;
  size_t lines = 0;
  if (len > KP_HTTP_DEFAULT_MAX_HEAD) return 0;
  while (p < end && (p = memchr(p, '\n', (size_t)(end - p))) != NULL) {
    lines++;
    p++;
  }
  /* The request line and the blank line are not fields. */
  return lines <= KP_HTTP_MAX_HEADERS + 2;
}

uint8_t *kp__http_build_response(int status, const char *reason,
                                 const char *content_type, const char *body,
                                 size_t body_len, int close, size_t *out_len) {
  sbuf_t b = {0};
  char line[256];
  int n = snprintf(line, sizeof(line),
                   "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n"
                   "Content-Length: %zu\r\nCache-Control: no-cache, private\r\n%s\r\n",
                   status, reason, content_type, body_len,
                   close ? "Connection: close\r\n" : "");
  sb_add(&b, line, (size_t)n);
  sb_add(&b, body, body_len);
  if (b.failed) {
    free(b.p);
    return NULL;
  }
  *out_len = b.len;
  return b.p;
}

/* Appends s as the inside of a JSON string (RFC 8259 7): quotes,
 * backslashes and control characters escaped. */
/* The length of the valid UTF-8 sequence at s (s[0] >= 0x80), or 0: no
 * overlong forms, no surrogates, nothing past U+10FFFF (RFC 3629). */
static size_t utf8_seq(const unsigned char *s) {
  unsigned char c = s[0];
  size_t n, i;
  uint32_t cp;
  if (c >= 0xc2 && c <= 0xdf) n = 2, cp = c & 0x1fu;
  else if (c >= 0xe0 && c <= 0xef) n = 3, cp = c & 0x0fu;
  else if (c >= 0xf0 && c <= 0xf4) n = 4, cp = c & 0x07u;
  else return 0;
  for (i = 1; i < n; i++) {
    if ((s[i] & 0xc0) != 0x80) return 0; /* the NUL stops it too */
    cp = cp << 6 | (s[i] & 0x3fu);
  }
  if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
      (cp >= 0xd800 && cp <= 0xdfff))
    return 0;
  return n;
}

static void sb_json(sbuf_t *b, const char *str) {
  const unsigned char *s = (const unsigned char *)str;
  while (*s) {
    unsigned char c = *s;
    char esc[8];
    size_t n;
    if (c == '"' || c == '\\') {
      esc[0] = '\\';
      esc[1] = (char)c;
      sb_add(b, esc, 2);
      s++;
    } else if (c < 0x20 || c == 0x7f) {
      snprintf(esc, sizeof(esc), "\\u%04x", c);
      sb_add(b, esc, 6);
      s++;
    } else if (c < 0x80) {
      sb_add(b, s, 1);
      s++;
    } else if ((n = utf8_seq(s)) != 0) {
      sb_add(b, s, n);
      s += n;
    } else {
      sb_str(b, "\\ufffd");
      s++;
    }
  }
}

char *kp_status_json(int code, const char *reason, const char *message,
                     size_t *out_len) {
  sbuf_t body = {0};
  char tail[32];
  sb_str(&body, "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},"
                "\"status\":\"Failure\",\"message\":\"");
  sb_json(&body, message ? message : "");
  sb_str(&body, "\",\"reason\":\"");
  sb_json(&body, reason ? reason : "");
  snprintf(tail, sizeof(tail), "\",\"code\":%d}\n", code);
  sb_add(&body, tail, strlen(tail) + 1); /* with the NUL */
  if (body.failed) {
    free(body.p);
    return NULL;
  }
  *out_len = body.len - 1;
  return (char *)body.p;
}

uint8_t *kp__http_build_status(int status, const char *reason,
                               const char *message, int close,
                               size_t *out_len) {
  size_t len;
  char *body = kp_status_json(status, reason, message, &len);
  uint8_t *resp;
  if (body == NULL) return NULL;
  resp = kp__http_build_response(status, kp__http_reason(status),
                                 "application/json", body, len, close, out_len);
  free(body);
  return resp;
}
