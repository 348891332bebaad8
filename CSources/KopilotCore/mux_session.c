/* mux_session.c - a yamux session as a pure state machine (yamux spec.md;
 * behaviour matched against hashicorp/yamux's session.go and stream.go).
 *
 * No I/O: kp_mux_feed takes transport bytes in any split, kp_mux_tick takes
 * the time, and every frame leaves through callbacks.send at once. Payload
 * is handed up as pointers into the fed bytes; the receive window is given
 * back only when the application says it consumed them, so memory per stream
 * is bounded by the window the application controls.
 *
 * Reentrancy: every public entry point brackets its work with enter()/
 * leave(). Anything that would fire a callback as a side effect of a call
 * the application made (a stream finishing, a stream becoming writable, the
 * session closing) is put on a queue, and the outermost leave() drains the
 * queues. So callbacks never nest, a stream's memory outlives every pointer
 * the parser holds to it within one call, and the application may write,
 * consume, close or reset streams from any callback. */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>

struct kp_mux_stream {
  kp_mux_t *m;
  uint32_t id;
  void *ud;
  kp_mux_stream_t *hnext;            /* hash bucket chain (live only) */
  kp_mux_stream_t *prev, *next;      /* live list */
  kp_mux_stream_t *wnext;            /* writable queue */
  kp_mux_stream_t *tprev, *tnext;    /* waiting for the transport */
  kp_mux_stream_t *cnext;            /* close queue, then dead list */
  uint32_t send_window;              /* what the peer lets us send */
  uint32_t recv_window;              /* what the peer may still send us */
  uint32_t unconsumed;               /* delivered, not yet consumed */
  uint32_t owed;                     /* consumed, not yet given back */
  uint32_t target;                   /* receive window announced in all */
  uint32_t charged;                  /* of it, drawn from the budget */
  uint64_t epoch;                    /* when the last update went out */
  int status;                        /* once finished */
  unsigned inbound : 1, accepted : 1, acked : 1, sent_fin : 1, recv_fin : 1,
      finished : 1, want_write : 1, in_wq : 1, in_tw : 1,
      held : 1,  /* reader held back since the last update */
      fast : 1;  /* the epoch before the last update went fast */
};

struct kp_mux {
  kp_mux_config_t cfg;
  kp_mux_callbacks_t cb;
  void *ud;
  uint32_t next_id;

  /* Streams by id: chained hash table, grown to keep load <= 1, so lookup
   * is O(1) on average with tens of thousands of streams. */
  kp_mux_stream_t **buckets;
  uint32_t nbuckets; /* power of two, 2^(32 - hshift) */
  unsigned hshift;
  uint32_t nstreams;
  uint32_t unaccepted;
  kp_mux_stream_t *live;

  /* Deferred work (see the file comment). */
  kp_mux_stream_t *wq_head, *wq_tail; /* on_writable to fire */
  kp_mux_stream_t *tw_head;           /* refused while transport blocked */
  kp_mux_stream_t *cq_head, *cq_tail; /* on_stream_close to fire */
  kp_mux_stream_t *dead;              /* to free */

  /* Parser: a header being collected, then the payload of a Data frame. */
  uint8_t hbuf[KP_MUX_HEADER_SIZE];
  size_t hlen;
  uint32_t remaining;      /* payload bytes of the current frame left */
  kp_mux_stream_t *cur_s;  /* their stream; NULL: drain them */
  int cur_fin;             /* the current Data frame carries FIN */

  int depth;
  int closed, close_status, close_started, on_close_fired, free_pending;
  int goaway_sent, goaway_recv;
  int send_blocked;

  /* Keepalive. */
  uint64_t now;
  int clock_started;
  uint64_t next_ping;
  int ping_outstanding;
  uint32_t ping_id;
  uint64_t ping_deadline;
  uint64_t ping_sent;
  uint64_t rtt;             /* ms, from the last answered ping; 0: none */
};

/* ---------------------------------------------------------------- */
/* Helpers                                                           */
/* ---------------------------------------------------------------- */

static void mlog(kp_mux_t *m, const char *fmt, ...) {
  char buf[160];
  va_list ap;
  if (m->cb.log == NULL) return;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof(buf), fmt, ap);
  va_end(ap);
  m->cb.log(m, buf, m->ud);
}

static void emit(kp_mux_t *m, uint8_t type, uint16_t flags, uint32_t id,
                 uint32_t length, const uint8_t *data, size_t dlen) {
  uint8_t hdr[KP_MUX_HEADER_SIZE];
  const uint8_t *bufs[2];
  size_t lens[2];
  kp_mux_header_t h;
  if (m->closed) return;
  h.version = KP_MUX_VERSION;
  h.type = type;
  h.flags = flags;
  h.stream_id = id;
  h.length = length;
  kp_mux_header_encode(hdr, &h);
  bufs[0] = hdr;
  lens[0] = sizeof(hdr);
  bufs[1] = data;
  lens[1] = dlen;
  m->cb.send(m, bufs, lens, dlen > 0 ? 2 : 1, m->ud);
}

static uint32_t bucket_of(const kp_mux_t *m, uint32_t id) {
  /* Fibonacci hashing: ids are sequential and of one parity, so the
   * multiply spreads them; the top bits are the best mixed. */
  return (uint32_t)(id * UINT32_C(2654435769)) >> m->hshift;
}

static kp_mux_stream_t *lookup(const kp_mux_t *m, uint32_t id) {
  kp_mux_stream_t *s = m->buckets[bucket_of(m, id)];
  while (s != NULL && s->id != id) s = s->hnext;
  return s;
}

static int grow(kp_mux_t *m) {
  uint32_t i, old_n = m->nbuckets;
  kp_mux_stream_t **old = m->buckets, **nb;
  nb = calloc((size_t)old_n * 2, sizeof(*nb));
  if (nb == NULL) return KP_ENOMEM;
  m->buckets = nb;
  m->nbuckets = old_n * 2;
  m->hshift--;
  for (i = 0; i < old_n; i++) {
    kp_mux_stream_t *s = old[i], *n;
    for (; s != NULL; s = n) {
      uint32_t b = bucket_of(m, s->id);
      n = s->hnext;
      s->hnext = nb[b];
      nb[b] = s;
    }
  }
  free(old);
  return 0;
}

static kp_mux_stream_t *stream_new(kp_mux_t *m, uint32_t id, int inbound) {
  kp_mux_stream_t *s;
  uint32_t b;
  if (m->nstreams >= m->nbuckets && grow(m) != 0) return NULL;
  s = calloc(1, sizeof(*s));
  if (s == NULL) return NULL;
  s->m = m;
  s->id = id;
  s->inbound = inbound ? 1 : 0;
  /* spec.md: both sides start with a 256 KiB window per stream; the SYN or
   * ACK window update announces our larger receive window. */
  s->send_window = KP_MUX_INITIAL_WINDOW;
  s->recv_window = KP_MUX_INITIAL_WINDOW;
  s->target = KP_MUX_INITIAL_WINDOW;
  s->epoch = m->now;
  b = bucket_of(m, id);
  s->hnext = m->buckets[b];
  m->buckets[b] = s;
  s->next = m->live;
  if (m->live != NULL) m->live->prev = s;
  m->live = s;
  m->nstreams++;
  return s;
}

static void tw_unlink(kp_mux_t *m, kp_mux_stream_t *s) {
  if (!s->in_tw) return;
  if (s->tprev != NULL) s->tprev->tnext = s->tnext;
  else m->tw_head = s->tnext;
  if (s->tnext != NULL) s->tnext->tprev = s->tprev;
  s->tprev = s->tnext = NULL;
  s->in_tw = 0;
}

static void wq_push(kp_mux_t *m, kp_mux_stream_t *s) {
  if (s->in_wq) return;
  s->in_wq = 1;
  s->wnext = NULL;
  if (m->wq_tail != NULL) m->wq_tail->wnext = s;
  else m->wq_head = s;
  m->wq_tail = s;
}

/* Takes a stream out of every lookup structure and queues its
 * on_stream_close. The memory stays until the outermost leave(). */
static void budget_release(kp_mux_stream_t *s) {
  if (s->charged) kp__budget_give(s->charged);
  s->charged = 0;
}

static void stream_finish(kp_mux_stream_t *s, int status) {
  kp_mux_t *m = s->m;
  kp_mux_stream_t **pp;
  if (s->finished) return;
  budget_release(s);
  s->finished = 1;
  s->status = status;
  for (pp = &m->buckets[bucket_of(m, s->id)]; *pp != s; pp = &(*pp)->hnext) {
  }
  *pp = s->hnext;
  s->hnext = NULL;
  if (s->prev != NULL) s->prev->next = s->next;
  else m->live = s->next;
  if (s->next != NULL) s->next->prev = s->prev;
  s->prev = s->next = NULL;
  tw_unlink(m, s);
  m->nstreams--;
  if (s->inbound && !s->accepted) m->unaccepted--;
  /* The rest of a Data frame in flight for it is drained. */
  if (m->cur_s == s) m->cur_s = NULL;
  s->cnext = NULL;
  if (m->cq_tail != NULL) m->cq_tail->cnext = s;
  else m->cq_head = s;
  m->cq_tail = s;
}

static void mark_closed(kp_mux_t *m, int status) {
  if (m->closed) return;
  m->closed = 1;
  m->close_status = status;
}

static void do_free(kp_mux_t *m) {
  kp_mux_stream_t *s, *n;
  for (s = m->live; s != NULL; s = n) {
    n = s->next;
    budget_release(s);
    free(s);
  }
  for (s = m->cq_head; s != NULL; s = n) {
    n = s->cnext;
    free(s);
  }
  for (s = m->dead; s != NULL; s = n) {
    n = s->cnext;
    free(s);
  }
  free(m->buckets);
  free(m);
}

static void enter(kp_mux_t *m) { m->depth++; }

/* Fires the deferred callbacks and frees finished streams. Runs only at
 * depth 1 (the outermost call); callbacks it fires run at depth 1 too, so
 * what they cause is queued and picked up by this same loop. */
static void run_deferred(kp_mux_t *m) {
  kp_mux_stream_t *s;
  while (!m->free_pending) {
    if (m->closed && !m->close_started) {
      int st = m->close_status != 0 ? m->close_status : KP_ECLOSED;
      m->close_started = 1;
      while (m->live != NULL) stream_finish(m->live, st);
      continue;
    }
    if (m->wq_head != NULL) {
      s = m->wq_head;
      m->wq_head = s->wnext;
      if (m->wq_head == NULL) m->wq_tail = NULL;
      s->wnext = NULL;
      s->in_wq = 0;
      if (!s->finished && !m->closed && m->cb.on_writable != NULL)
        m->cb.on_writable(s, m->ud);
      continue;
    }
    if (m->cq_head != NULL) {
      s = m->cq_head;
      m->cq_head = s->cnext;
      if (m->cq_head == NULL) m->cq_tail = NULL;
      s->cnext = m->dead;
      m->dead = s;
      if (m->cb.on_stream_close != NULL)
        m->cb.on_stream_close(s, s->status, m->ud);
      continue;
    }
    if (m->close_started && !m->on_close_fired) {
      m->on_close_fired = 1;
      if (m->cb.on_close != NULL) m->cb.on_close(m, m->close_status, m->ud);
      continue;
    }
    break;
  }
  if (m->free_pending) return;
  while (m->dead != NULL) {
    s = m->dead;
    m->dead = s->cnext;
    free(s);
  }
}

/* Ends a public call. After leave() the caller must not touch m: a callback
 * may have freed it. */
static void leave(kp_mux_t *m) {
  if (m->depth > 1) {
    m->depth--;
    return;
  }
  run_deferred(m);
  if (m->free_pending) {
    do_free(m);
    return;
  }
  m->depth = 0;
}

/* spec.md: on a protocol error "GoAway ... Protocol error" is sent and the
 * session is closed; yamux's handleStreamMessage does the same. */
static int proto_error(kp_mux_t *m, const char *what, uint32_t id) {
  mlog(m, "mux: protocol error: %s (stream %u)", what, (unsigned)id);
  if (!m->closed) {
    emit(m, KP_MUX_TYPE_GO_AWAY, 0, 0, KP_MUX_GOAWAY_PROTOCOL, NULL, 0);
    m->goaway_sent = 1;
  }
  mark_closed(m, KP_EPROTO);
  return KP_EPROTO;
}

/* Announces the receive window beyond the initial 256 KiB (yamux:
 * delta = MaxStreamWindowSize - recvWindow, sent with SYN or ACK). */
static void send_window_open(kp_mux_stream_t *s, uint16_t flag) {
  kp_mux_t *m = s->m;
  uint32_t start = m->cfg.window_start ? m->cfg.window_start : m->cfg.window;
  uint32_t delta = start - KP_MUX_INITIAL_WINDOW;
  /* Added, not set: data may have arrived before an accept. */
  s->recv_window += delta;
  s->target = start;
  s->epoch = m->now;
  emit(m, KP_MUX_TYPE_WINDOW_UPDATE, flag, s->id, delta, NULL, 0);
}

static void do_accept(kp_mux_stream_t *s) {
  s->accepted = 1;
  s->m->unaccepted--;
  send_window_open(s, KP_MUX_FLAG_ACK);
}

/* ---------------------------------------------------------------- */
/* Inbound frames                                                    */
/* ---------------------------------------------------------------- */

/* The peer's FIN. yamux's processFlags rejects a second FIN
 * (ErrUnexpectedFlag), a session error. */
static int recv_fin(kp_mux_stream_t *s) {
  kp_mux_t *m = s->m;
  if (s->recv_fin) return proto_error(m, "second FIN", s->id);
  s->recv_fin = 1;
  if (m->cb.on_eof != NULL) m->cb.on_eof(s, m->ud);
  if (!s->finished && s->sent_fin) stream_finish(s, 0);
  return 0;
}

/* A SYN: a new inbound stream. Returns 0 with *out set (NULL when refused
 * with RST; the frame is then drained) or a protocol error. */
static int incoming(kp_mux_t *m, uint32_t id, kp_mux_stream_t **out) {
  kp_mux_stream_t *s;
  uint32_t max = m->cfg.max_streams != 0 ? m->cfg.max_streams : 65536;
  *out = NULL;
  /* spec.md "Stream identifiers": the client uses odd ids, the server even;
   * a SYN with our own parity would collide with our streams. */
  if ((id & 1) != (m->cfg.is_server ? 1u : 0u))
    return proto_error(m, "SYN with the wrong parity", id);
  if (lookup(m, id) != NULL)
    return proto_error(m, "SYN for a stream in use", id);
  if (m->goaway_sent) {
    /* We said no new streams (yamux incomingStream: RST when localGoAway). */
    emit(m, KP_MUX_TYPE_WINDOW_UPDATE, KP_MUX_FLAG_RST, id, 0, NULL, 0);
    return 0;
  }
  if (m->unaccepted >= m->cfg.accept_backlog || m->nstreams >= max) {
    /* yamux: "backlog exceeded, forcing connection reset". */
    mlog(m, "mux: backlog or stream limit reached, RST stream %u",
         (unsigned)id);
    emit(m, KP_MUX_TYPE_WINDOW_UPDATE, KP_MUX_FLAG_RST, id, 0, NULL, 0);
    return 0;
  }
  s = stream_new(m, id, 1);
  if (s == NULL) {
    /* Refusing one stream is the smallest unit that can fail here. */
    mlog(m, "mux: out of memory, RST stream %u", (unsigned)id);
    emit(m, KP_MUX_TYPE_WINDOW_UPDATE, KP_MUX_FLAG_RST, id, 0, NULL, 0);
    return 0;
  }
  m->unaccepted++;
  *out = s;
  if (m->cb.on_stream != NULL) m->cb.on_stream(m, s, m->ud);
  return 0;
}

static void end_frame(kp_mux_t *m) {
  kp_mux_stream_t *s = m->cur_s;
  int fin = m->cur_fin;
  m->cur_s = NULL;
  m->cur_fin = 0;
  if (fin && s != NULL && !s->finished && !m->closed) recv_fin(s);
}

static int handle_stream_frame(kp_mux_t *m, const kp_mux_header_t *h) {
  kp_mux_stream_t *s;
  int rc;
  uint32_t drain = h->type == KP_MUX_TYPE_DATA ? h->length : 0;

  /* Stream id 0 is the session itself (spec.md); Data or WindowUpdate on it
   * is meaningless. */
  if (h->stream_id == 0) return proto_error(m, "stream frame on id 0", 0);
  if (h->flags & KP_MUX_FLAG_SYN) {
    rc = incoming(m, h->stream_id, &s);
    if (rc < 0 || m->closed) return rc;
  } else {
    s = lookup(m, h->stream_id);
  }
  if (s == NULL || s->finished) {
    /* Most likely we already reset or finished it and the peer's frames
     * were in flight: drain and log, as yamux does ("Discarding data for
     * stream"), never a session error. */
    if (!(h->flags & KP_MUX_FLAG_SYN))
      mlog(m, "mux: %s for unknown stream %u (%u bytes drained)",
           h->type == KP_MUX_TYPE_DATA ? "data" : "window update",
           (unsigned)h->stream_id, (unsigned)drain);
    m->remaining = drain;
    m->cur_s = NULL;
    return 0;
  }
  if ((h->flags & KP_MUX_FLAG_ACK) && !s->inbound) s->acked = 1;
  if (h->flags & KP_MUX_FLAG_RST) {
    /* An RST before the ACK means the peer refused the stream (backlog
     * full or going away). Any payload is dropped. */
    stream_finish(s, !s->inbound && !s->acked ? KP_EREFUSED : KP_ERESET);
    m->remaining = drain;
    return 0;
  }
  if (h->type == KP_MUX_TYPE_WINDOW_UPDATE) {
    if ((uint64_t)s->send_window + h->length > UINT32_MAX)
      return proto_error(m, "send window overflow", s->id);
    s->send_window += h->length;
    if (h->length > 0 && s->want_write) {
      s->want_write = 0;
      wq_push(m, s);
    }
    if (h->flags & KP_MUX_FLAG_FIN) return recv_fin(s);
    return 0;
  }
  /* Data. */
  if (s->recv_fin && (h->length > 0 || (h->flags & KP_MUX_FLAG_FIN)))
    return proto_error(m, "data after FIN", s->id);
  /* spec.md "Flow Control": a sender must not exceed the window; yamux's
   * readData fails the session with ErrRecvWindowExceeded. */
  if (h->length > s->recv_window)
    return proto_error(m, "receive window exceeded", s->id);
  s->recv_window -= h->length;
  m->remaining = h->length;
  m->cur_s = s;
  m->cur_fin = (h->flags & KP_MUX_FLAG_FIN) != 0;
  if (h->length == 0) end_frame(m);
  return 0;
}

static int handle_header(kp_mux_t *m) {
  kp_mux_header_t h;
  if (kp_mux_header_decode(m->hbuf, KP_MUX_HEADER_SIZE, &h) < 0)
    return proto_error(m, m->hbuf[0] != KP_MUX_VERSION ? "bad version"
                                                       : "unknown type",
                       kp__load32(m->hbuf + 4));
  switch (h.type) {
  case KP_MUX_TYPE_PING:
    /* spec.md "Ping": SYN asks, ACK answers, Length is an opaque value
     * echoed back; no payload follows. */
    if (h.flags & KP_MUX_FLAG_SYN) {
      emit(m, KP_MUX_TYPE_PING, KP_MUX_FLAG_ACK, 0, h.length, NULL, 0);
    } else if ((h.flags & KP_MUX_FLAG_ACK) && m->ping_outstanding &&
               h.length == m->ping_id) {
      m->ping_outstanding = 0;
      m->rtt = m->now > m->ping_sent ? m->now - m->ping_sent : 0;
    }
    return 0;
  case KP_MUX_TYPE_GO_AWAY:
    /* spec.md "GoAway": Length is the code. Normal means no new streams;
     * yamux's handleGoAway ends the session on the error codes. */
    m->goaway_recv = 1;
    if (m->cb.on_goaway != NULL) m->cb.on_goaway(m, h.length, m->ud);
    if (h.length != KP_MUX_GOAWAY_NORMAL) {
      mlog(m, "mux: peer sent GoAway(%u)", (unsigned)h.length);
      mark_closed(m, KP_EGOAWAY);
    }
    return 0;
  default:
    return handle_stream_frame(m, &h);
  }
}

/* ---------------------------------------------------------------- */
/* Public API                                                        */
/* ---------------------------------------------------------------- */

void kp_mux_config_default(kp_mux_config_t *cfg, int is_server) {
  memset(cfg, 0, sizeof(*cfg));
  cfg->is_server = is_server ? 1 : 0;
  cfg->window = KP_MUX_INITIAL_WINDOW;
  cfg->accept_backlog = 256;
  cfg->max_streams = 0;
  cfg->keepalive_ms = 30000;
  cfg->keepalive_timeout_ms = 30000;
}

int kp_mux_new(kp_mux_t **out, const kp_mux_config_t *cfg,
               const kp_mux_callbacks_t *cbs, void *ud) {
  kp_mux_t *m;
  if (out == NULL || cfg == NULL || cbs == NULL || cbs->send == NULL)
    return KP_EINVAL;
  if (cfg->window < KP_MUX_INITIAL_WINDOW || cfg->accept_backlog == 0)
    return KP_EINVAL;
  if (cfg->window_start != 0 && (cfg->window_start < KP_MUX_INITIAL_WINDOW ||
                                 cfg->window_start > cfg->window))
    return KP_EINVAL;
  m = calloc(1, sizeof(*m));
  if (m == NULL) return KP_ENOMEM;
  /* Small to start: most sessions sit idle (the table doubles as streams
   * come). */
  m->nbuckets = 8;
  m->hshift = 32 - 3;
  m->buckets = calloc(m->nbuckets, sizeof(*m->buckets));
  if (m->buckets == NULL) {
    free(m);
    return KP_ENOMEM;
  }
  m->cfg = *cfg;
  m->cfg.is_server = cfg->is_server ? 1 : 0;
  if (m->cfg.keepalive_timeout_ms == 0)
    m->cfg.keepalive_timeout_ms = m->cfg.keepalive_ms;
  m->cb = *cbs;
  m->ud = ud;
  /* spec.md "Stream identifiers": client odd from 1, server even from 2. */
  m->next_id = m->cfg.is_server ? 2 : 1;
  *out = m;
  return 0;
}

void kp_mux_free(kp_mux_t *m) {
  if (m == NULL) return;
  if (m->depth > 0) {
    m->free_pending = 1;
    return;
  }
  do_free(m);
}

void *kp_mux_user_data(kp_mux_t *m) { return m->ud; }
uint32_t kp_mux_num_streams(const kp_mux_t *m) { return m->nstreams; }
int kp_mux_is_closed(const kp_mux_t *m) { return m->closed; }

int kp_mux_feed(kp_mux_t *m, const uint8_t *data, size_t len,
                kp_chunk_t *chunk) {
  int rc;
  if (m == NULL || (data == NULL && len > 0) || m->depth > 0)
    return KP_EINVAL;
  if (m->closed) return KP_ECLOSED;
  enter(m);
  while (len > 0 && !m->closed && !m->free_pending) {
    /* Callbacks a frame caused fire before the next frame is parsed, so
     * their order does not depend on how the input was split. */
    run_deferred(m);
    if (m->closed || m->free_pending) break;
    if (m->remaining == 0) {
      size_t take = KP__MIN(KP_MUX_HEADER_SIZE - m->hlen, len);
      memcpy(m->hbuf + m->hlen, data, take);
      m->hlen += take;
      data += take;
      len -= take;
      if (m->hlen < KP_MUX_HEADER_SIZE) break;
      m->hlen = 0;
      handle_header(m);
    } else {
      size_t n = KP__MIN((size_t)m->remaining, len);
      kp_mux_stream_t *s = m->cur_s;
      if (s != NULL) {
        s->unconsumed += (uint32_t)n;
        if (m->cb.on_data != NULL) m->cb.on_data(s, data, n, chunk, m->ud);
      }
      m->remaining -= (uint32_t)n;
      data += n;
      len -= n;
      if (m->remaining == 0) end_frame(m);
    }
  }
  rc = !m->closed ? 0 : m->close_status != 0 ? m->close_status : KP_ECLOSED;
  leave(m);
  return rc;
}

uint64_t kp_mux_tick(kp_mux_t *m, uint64_t now_ms) {
  uint64_t next, ret;
  if (m == NULL || m->depth > 0 || m->closed) return UINT64_MAX;
  if (m->cfg.keepalive_ms == 0) {
    m->now = now_ms;
    return UINT64_MAX;
  }
  enter(m);
  m->now = now_ms;
  if (!m->clock_started) {
    m->clock_started = 1;
    m->next_ping = now_ms + m->cfg.keepalive_ms;
  }
  if (m->ping_outstanding && now_ms >= m->ping_deadline) {
    /* yamux keepalive(): a ping unanswered in time ends the session
     * (ErrKeepAliveTimeout). */
    mlog(m, "mux: keepalive timeout");
    mark_closed(m, KP_ETIMEDOUT);
    ret = UINT64_MAX;
  } else {
    if (!m->ping_outstanding && now_ms >= m->next_ping) {
      kp_mux_ping(m);
      m->next_ping = now_ms + m->cfg.keepalive_ms;
    }
    next = m->next_ping;
    if (m->ping_outstanding && m->ping_deadline < next)
      next = m->ping_deadline;
    ret = next > now_ms ? next - now_ms : 0;
  }
  leave(m);
  return ret;
}

void kp_mux_set_send_blocked(kp_mux_t *m, int blocked) {
  int was = m->send_blocked;
  m->send_blocked = blocked ? 1 : 0;
  if (!was || blocked) return;
  enter(m);
  while (m->tw_head != NULL) {
    kp_mux_stream_t *s = m->tw_head;
    tw_unlink(m, s);
    wq_push(m, s);
  }
  leave(m);
}

int kp_mux_goaway(kp_mux_t *m, uint32_t code) {
  if (m->closed) return KP_ECLOSED;
  enter(m);
  emit(m, KP_MUX_TYPE_GO_AWAY, 0, 0, code, NULL, 0);
  m->goaway_sent = 1;
  leave(m);
  return 0;
}

void kp_mux_close(kp_mux_t *m, int status) {
  if (m->closed) return;
  enter(m);
  mark_closed(m, status);
  leave(m);
}

int kp_mux_ping(kp_mux_t *m) {
  if (m->closed) return KP_ECLOSED;
  enter(m);
  m->ping_id++;
  m->ping_outstanding = 1;
  m->ping_deadline = m->now + m->cfg.keepalive_timeout_ms;
  m->ping_sent = m->now;
  emit(m, KP_MUX_TYPE_PING, KP_MUX_FLAG_SYN, 0, m->ping_id, NULL, 0);
  leave(m);
  return 0;
}

int kp_mux_open(kp_mux_t *m, kp_mux_stream_t **out) {
  kp_mux_stream_t *s;
  uint32_t max = m->cfg.max_streams != 0 ? m->cfg.max_streams : 65536;
  if (m->closed) return KP_ECLOSED;
  if (m->goaway_sent || m->goaway_recv) return KP_EGOAWAY;
  /* yamux OpenStream: ErrStreamsExhausted near the top of the id space. */
  if (m->nstreams >= max || m->next_id >= UINT32_MAX - 1) return KP_ETOOMANY;
  enter(m);
  s = stream_new(m, m->next_id, 0);
  if (s == NULL) {
    leave(m);
    return KP_ENOMEM;
  }
  m->next_id += 2;
  *out = s;
  send_window_open(s, KP_MUX_FLAG_SYN);
  leave(m);
  return 0;
}

int kp_mux_stream_accept(kp_mux_stream_t *s) {
  kp_mux_t *m = s->m;
  if (s->finished || m->closed) return KP_ECLOSED;
  if (!s->inbound || s->accepted) return KP_EINVAL;
  enter(m);
  do_accept(s);
  leave(m);
  return 0;
}

uint32_t kp_mux_stream_id(const kp_mux_stream_t *s) { return s->id; }
void kp_mux_stream_set_user_data(kp_mux_stream_t *s, void *ud) { s->ud = ud; }
void *kp_mux_stream_user_data(const kp_mux_stream_t *s) { return s->ud; }
kp_mux_t *kp_mux_stream_session(const kp_mux_stream_t *s) { return s->m; }
uint32_t kp_mux_stream_send_window(const kp_mux_stream_t *s) {
  return s->finished ? 0 : s->send_window;
}

int64_t kp_mux_stream_write(kp_mux_stream_t *s, const uint8_t *data,
                            size_t len) {
  kp_mux_t *m = s->m;
  uint32_t n;
  if (s->finished)
    return s->status == KP_ERESET || s->status == KP_EREFUSED ? s->status
                                                               : KP_ECLOSED;
  if (m->closed || s->sent_fin) return KP_ECLOSED;
  if (len == 0) return 0;
  enter(m);
  if (s->inbound && !s->accepted) do_accept(s);
  if (m->send_blocked) {
    if (!s->in_tw) {
      s->in_tw = 1;
      s->tprev = NULL;
      s->tnext = m->tw_head;
      if (m->tw_head != NULL) m->tw_head->tprev = s;
      m->tw_head = s;
    }
    leave(m);
    return 0;
  }
  n = (uint32_t)KP__MIN((size_t)s->send_window, len);
  if (n > 0) {
    emit(m, KP_MUX_TYPE_DATA, 0, s->id, n, data, n);
    s->send_window -= n;
  }
  if (n < len) s->want_write = 1;
  leave(m);
  return (int64_t)n;
}

void kp_mux_stream_consume(kp_mux_stream_t *s, size_t n) {
  kp_mux_t *m = s->m;
  uint32_t grow;
  int fast;
  if (s->finished || m->closed) return;
  if (n > s->unconsumed) n = s->unconsumed;
  s->unconsumed -= (uint32_t)n;
  s->owed += (uint32_t)n;
  /* yamux sendWindowUpdate: the update is held back until at least half
   * the window is owed, then sized to all that was consumed. After the
   * peer's FIN nothing more will come, so nothing is given back. */
  if (s->recv_fin || s->owed < s->target / 2) return;
  enter(m);
  grow = 0;
  /* Auto-tuning: half the window went by within the allowance, twice in a
   * row and with the reader never held back, so the window, not the
   * reader, set the pace: double it (at most `window`). Twice, because a
   * reader's socket buffer swallows the first bytes of any transfer at
   * once, however slowly the reader behind it reads. */
  fast = !s->held && m->now - s->epoch <= KP_MUX_TUNE_FLOOR_MS + 2 * m->rtt;
  if (m->cfg.window_start && s->target < m->cfg.window && fast && s->fast)
    grow = KP__MIN(s->target, m->cfg.window - s->target);
  s->fast = fast;
  if (grow && !kp__budget_take(grow)) grow = 0; /* under pressure: as it is */
  s->charged += grow;
  s->target += grow;
  s->recv_window += s->owed + grow;
  emit(m, KP_MUX_TYPE_WINDOW_UPDATE, 0, s->id, s->owed + grow, NULL, 0);
  s->owed = 0;
  s->epoch = m->now;
  s->held = 0;
  leave(m);
}

void kp_mux_stream_reader_held(kp_mux_stream_t *s) { s->held = 1; }

void kp_mux_set_now(kp_mux_t *m, uint64_t now_ms) {
  if (m != NULL && now_ms > m->now) m->now = now_ms;
}

uint32_t kp_mux_stream_recv_target(const kp_mux_stream_t *s) {
  return s->target;
}

int kp_mux_stream_close(kp_mux_stream_t *s) {
  kp_mux_t *m = s->m;
  if (s->finished || m->closed) return KP_ECLOSED;
  if (s->sent_fin) return 0;
  enter(m);
  if (s->inbound && !s->accepted) do_accept(s);
  /* yamux sendClose: FIN rides on a WindowUpdate with no delta. */
  emit(m, KP_MUX_TYPE_WINDOW_UPDATE, KP_MUX_FLAG_FIN, s->id, 0, NULL, 0);
  s->sent_fin = 1;
  s->want_write = 0;
  tw_unlink(m, s);
  if (s->recv_fin) stream_finish(s, 0);
  leave(m);
  return 0;
}

int kp_mux_stream_reset(kp_mux_stream_t *s) {
  kp_mux_t *m = s->m;
  if (s->finished || m->closed) return KP_ECLOSED;
  enter(m);
  emit(m, KP_MUX_TYPE_WINDOW_UPDATE, KP_MUX_FLAG_RST, s->id, 0, NULL, 0);
  stream_finish(s, KP_ECLOSED);
  leave(m);
  return 0;
}
