/* session.c - a mux session on a TLS connection, framed or raw. */
#include "session.h"

#include <openssl/rand.h>
#include <stdio.h>

/* The transport queue at which the session stops taking stream writes, and
 * the level at which it takes them again. Deep enough for a 4 MiB stream
 * window to keep a bulk transfer flowing (kopilot-perf bulk: with 1 MiB
 * here, a larger window gained nothing). */
#define SESS_HIGH_WATER (8u << 20)
#define SESS_LOW_WATER (4u << 20)

static void sess_conn_closed(kp__conn_t *c, int status);

/* A peer that sends frames which must be answered (pings, window updates,
 * WebSocket pings, streams to reset) and never reads would make the
 * session queue answers without bound. Stream data stops at
 * SESS_HIGH_WATER (one frame of at most a window may pass it), so a queue
 * beyond that plus a window plus SESS_CTRL_ALLOWANCE is answers the peer
 * does not read: reading from it stops. If it has not read them within
 * SESS_STALL_MS, the session ends with GoAway(internal error). The same
 * shape as HTTP/2 servers' limits on queued control frames (CVE-2019-9512,
 * ping flood). */
#define SESS_CTRL_ALLOWANCE (1u << 20)
#define SESS_STALL_MS 10000

/* ---- output ---- */

/* Writes bufs as one binary message (framed) or as they are (raw). A
 * server's frames are unmasked and go out without a copy; a client's are
 * masked (RFC 6455 5.3), which needs a copy: masking in place would change
 * the caller's bytes. */
static int sess_write_frame(kp__sess_t *s, int opcode,
                            const uint8_t *const *bufs, const size_t *lens,
                            size_t n) {
  uint8_t head[14], stage[16384];
  const uint8_t *vb[9];
  size_t vl[9], i, total = 0, hl, used;
  uint8_t mask[4];
  uint64_t off = 0;
  int rc = 0;
  if (!s->framed && opcode == KP_WS_OP_BINARY)
    return kp__conn_writev(s->conn, bufs, lens, n);
  for (i = 0; i < n; i++) total += lens[i];
  if (s->is_server && n < KP__ARRAY_LEN(vb)) {
    vb[0] = head;
    vl[0] = kp_ws_frame_head_encode(head, 1, opcode, NULL, total);
    for (i = 0; i < n; i++) {
      vb[i + 1] = bufs[i];
      vl[i + 1] = lens[i];
    }
    return kp__conn_writev(s->conn, vb, vl, n + 1);
  }
  if (RAND_bytes(mask, sizeof(mask)) != 1) return KP_EIO;
  hl = kp_ws_frame_head_encode(stage, 1, opcode, s->is_server ? NULL : mask,
                               total);
  used = hl;
  for (i = 0; i < n && rc == 0; i++) {
    const uint8_t *p = bufs[i];
    size_t len = lens[i];
    while (len > 0 && rc == 0) {
      size_t take = KP__MIN(sizeof(stage) - used, len);
      memcpy(stage + used, p, take);
      if (!s->is_server) kp_ws_mask(stage + used, take, mask, off);
      used += take;
      off += take;
      p += take;
      len -= take;
      if (used == sizeof(stage)) {
        rc = kp__conn_write(s->conn, stage, used);
        used = 0;
      }
    }
  }
  if (rc == 0 && used) rc = kp__conn_write(s->conn, stage, used);
  return rc;
}

static void mux_send(kp_mux_t *m, const uint8_t *const *bufs,
                     const size_t *lens, size_t n, void *ud) {
  kp__sess_t *s = ud;
  (void)m;
  if (s->closing) return;
  if (sess_write_frame(s, KP_WS_OP_BINARY, bufs, lens, n) != 0) {
    kp__conn_close(s->conn, KP_EIO);
    return;
  }
  if (s->conn->pending > SESS_HIGH_WATER) kp_mux_set_send_blocked(s->mux, 1);
}

/* ---- streams to relays ---- */

static kp__relay_t *relay_of(kp_mux_stream_t *st) {
  return kp_mux_stream_user_data(st);
}

static void mux_on_stream(kp_mux_t *m, kp_mux_stream_t *st, void *ud) {
  kp__sess_t *s = ud;
  (void)m;
  if (s->owner->on_stream) s->owner->on_stream(s, st);
  else kp_mux_stream_reset(st);
}

static void mux_on_data(kp_mux_stream_t *st, const uint8_t *p, size_t n,
                        kp_chunk_t *chunk, void *ud) {
  kp__sess_t *s = ud;
  kp__relay_t *r = relay_of(st);
  if (r == NULL) {
    kp_mux_stream_consume(st, n); /* nobody listens: keep the window open */
    return;
  }
  if (s->is_server) kp__relay_back_data(r, p, n, chunk);
  else kp__relay_front_data(r, p, n, chunk);
}

static void mux_on_eof(kp_mux_stream_t *st, void *ud) {
  kp__sess_t *s = ud;
  kp__relay_t *r = relay_of(st);
  if (r == NULL) return;
  if (s->is_server) kp__relay_back_eof(r);
  else kp__relay_front_eof(r);
}

static void mux_on_writable(kp_mux_stream_t *st, void *ud) {
  kp__relay_t *r = relay_of(st);
  (void)ud;
  if (r) kp__relay_writable(r);
}

static void mux_on_stream_close(kp_mux_stream_t *st, int status, void *ud) {
  kp__sess_t *s = ud;
  kp__relay_t *r = relay_of(st);
  if (r == NULL) return;
  kp_mux_stream_set_user_data(st, NULL);
  if (s->is_server) kp__relay_back_closed(r, status);
  else kp__relay_front_closed(r, status);
}

static void mux_on_close(kp_mux_t *m, int status, void *ud) {
  kp__sess_t *s = ud;
  (void)m;
  s->mux_closed = 1;
  if (!s->close_status) s->close_status = status;
  kp__conn_close(s->conn, status);
}

static void mux_log(kp_mux_t *m, const char *msg, void *ud) {
  (void)m;
  (void)ud;
  (void)msg; /* TODO: route to the owner's log once logging reaches C. */
}

static const kp_mux_callbacks_t sess_mux_cbs = {
    .send = mux_send,
    .on_stream = mux_on_stream,
    .on_data = mux_on_data,
    .on_eof = mux_on_eof,
    .on_writable = mux_on_writable,
    .on_stream_close = mux_on_stream_close,
    .on_close = mux_on_close,
    .log = mux_log,
};

/* ---- input ---- */

static void sess_fail(kp__sess_t *s, int status) {
  if (!s->close_status) s->close_status = status;
  if (!s->mux_closed) kp_mux_close(s->mux, status);
  kp__conn_close(s->conn, status);
}

static void sess_feed(kp__sess_t *s, const uint8_t *p, size_t n,
                      kp_chunk_t *chunk) {
  if (!s->framed) {
    int rc = kp_mux_feed(s->mux, p, n, chunk);
    if (rc < 0) sess_fail(s, rc);
    return;
  }
  while (n > 0 && !s->closing) {
    kp_ws_event_t ev;
    /* The plaintext chunk is ours: unmasking in place is safe. */
    int used = kp_ws_decode(&s->ws, (uint8_t *)p, n, &ev);
    if (used < 0) {
      uint8_t code[2];
      const uint8_t *b[1] = {code};
      size_t l[1] = {2};
      code[0] = (uint8_t)(s->ws.close_code >> 8);
      code[1] = (uint8_t)s->ws.close_code;
      sess_write_frame(s, KP_WS_OP_CLOSE, b, l, 1);
      sess_fail(s, KP_EPROTO);
      return;
    }
    p += used;
    n -= (size_t)used;
    switch (ev.type) {
    case KP_WS_EV_DATA:
      if (ev.len) {
        int rc = kp_mux_feed(s->mux, ev.data, ev.len, chunk);
        if (rc < 0) {
          sess_fail(s, rc);
          return;
        }
      }
      break;
    case KP_WS_EV_PING: {
      const uint8_t *b[1] = {ev.data};
      size_t l[1] = {ev.len};
      sess_write_frame(s, KP_WS_OP_PONG, b, l, 1);
      break;
    }
    case KP_WS_EV_CLOSE: {
      uint8_t code[2] = {0x03, 0xE8}; /* 1000 */
      const uint8_t *b[1] = {code};
      size_t l[1] = {2};
      sess_write_frame(s, KP_WS_OP_CLOSE, b, l, 1);
      sess_fail(s, KP_ECLOSED);
      return;
    }
    default:
      if (used == 0) return; /* need more */
      break;
    }
  }
}

/* ---- conn callbacks ---- */

static void sess_conn_read(kp__conn_t *c, const uint8_t *p, size_t n,
                           kp_chunk_t *chunk) {
  kp__sess_t *s = c->ud;
  kp_mux_set_now(s->mux, uv_now(kp__loop_uv(c->loop)));
  sess_feed(s, p, n, chunk);
  if (!s->closing && !s->stalled && c->pending > s->ctrl_limit) {
    s->stalled = 1;
    kp__conn_read(c, 0);
    kp__conn_set_timeout(c, SESS_STALL_MS);
  }
}

static void sess_conn_timeout(kp__conn_t *c) {
  kp__sess_t *s = c->ud;
  if (!s->mux_closed) kp_mux_goaway(s->mux, KP_MUX_GOAWAY_INTERNAL);
  sess_fail(s, KP_ETIMEDOUT);
}

static void sess_conn_eof(kp__conn_t *c) {
  kp__sess_t *s = c->ud;
  sess_fail(s, KP_ECLOSED);
}

static void sess_conn_written(kp__conn_t *c, size_t n) {
  kp__sess_t *s = c->ud;
  (void)n;
  if (!s->closing && !s->mux_closed && c->pending < SESS_LOW_WATER)
    kp_mux_set_send_blocked(s->mux, 0);
  if (s->stalled && !s->closing && c->pending <= s->ctrl_limit / 2) {
    s->stalled = 0;
    kp__conn_set_timeout(c, 0);
    kp__conn_read(c, 1);
  }
}

static void sess_timer_closed(uv_handle_t *h) {
  kp__sess_t *s = h->data;
  kp_mux_free(s->mux);
  free(s);
}

static void sess_conn_closed(kp__conn_t *c, int status) {
  kp__sess_t *s = c->ud;
  s->closing = 1;
  if (!s->close_status) s->close_status = status ? status : KP_ECLOSED;
  if (!s->mux_closed) {
    s->mux_closed = 1;
    kp_mux_close(s->mux, s->close_status);
  }
  if (s->owner->on_close) s->owner->on_close(s, s->close_status);
  uv_close((uv_handle_t *)&s->timer, sess_timer_closed);
}

static const kp__conn_cbs_t sess_conn_cbs = {
    .on_ready = NULL,
    .on_read = sess_conn_read,
    .on_eof = sess_conn_eof,
    .on_written = sess_conn_written,
    .on_close = sess_conn_closed,
    .on_timeout = sess_conn_timeout,
};

static void sess_tick(uv_timer_t *t) {
  kp__sess_t *s = t->data;
  uint64_t next;
  if (s->mux_closed) return;
  next = kp_mux_tick(s->mux, uv_now(t->loop));
  if (!s->mux_closed && next != UINT64_MAX)
    uv_timer_start(&s->timer, sess_tick, next ? next : 1, 0);
}

int kp__sess_start(kp__sess_t **out, kp__conn_t *conn, int is_server,
                   int framed, uint32_t window, uint64_t keepalive_ms,
                   const kp__sess_owner_t *owner, void *ud,
                   const uint8_t *rest, size_t rest_len) {
  kp__sess_t *s = calloc(1, sizeof(*s));
  kp_mux_config_t cfg;
  int rc;
  /* Unique across every loop of the process (hub or agent). */
  static _Atomic uint64_t next_id = 1;
  if (s == NULL) return KP_ENOMEM;
  kp_mux_config_default(&cfg, is_server);
  if (window > cfg.window) cfg.window = window;
  /* Streams start at yamux's 256 KiB and earn more as their readers keep
   * up (kp_mux_config_t.window_start): a slow caller pins little. */
  cfg.window_start = KP_MUX_INITIAL_WINDOW;
  if (keepalive_ms) {
    /* A ping unanswered for one interval means the peer is gone (frozen,
     * or a half-open connection). */
    cfg.keepalive_ms = keepalive_ms;
    cfg.keepalive_timeout_ms = keepalive_ms;
  }
  rc = kp_mux_new(&s->mux, &cfg, &sess_mux_cbs, s);
  if (rc != 0) {
    free(s);
    return rc;
  }
  s->conn = conn;
  s->owner = owner;
  s->ud = ud;
  s->framed = framed;
  s->is_server = is_server;
  s->ctrl_limit = (uint64_t)SESS_HIGH_WATER + cfg.window + SESS_CTRL_ALLOWANCE;
  s->id = next_id++;
  kp_ws_decoder_init(&s->ws, is_server, 0);
  uv_timer_init(kp__loop_uv(conn->loop), &s->timer);
  s->timer.data = s;
  conn->cbs = &sess_conn_cbs;
  conn->ud = s;
  kp__conn_set_timeout(conn, 0);
  kp__conn_read(conn, 1);
  sess_tick(&s->timer);
  *out = s;
  if (rest_len) sess_feed(s, rest, rest_len, NULL);
  return 0;
}

void kp__sess_close(kp__sess_t *s, int status) { sess_fail(s, status); }
