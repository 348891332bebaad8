/* fuzz_mux_session.c - libFuzzer target for the yamux session.
 *
 * Input: byte 0 picks the role (bit 0: server), whether the transport
 * starts blocked (bit 1) and the split size (bits 2-7, 1..64 bytes); the
 * rest is fed to the session in pieces of that size, the clock advancing
 * 700 ms per piece (keepalive 1 s, timeout 500 ms). The callbacks accept
 * streams and consume data, and - chosen by the payload bytes - write back,
 * half-close, reset, open a new stream, send GoAway, ping, or toggle the
 * transport, so the reentrancy paths run under ASan/UBSan. */
#include <stdlib.h>
#include <string.h>

#include "kopilot.h"

typedef struct fz {
  size_t sent;
  int blocked;
  int closed;
} fz_t;

static void on_send(kp_mux_t *m, const uint8_t *const *bufs,
                    const size_t *lens, size_t n, void *ud) {
  fz_t *f = ud;
  size_t i;
  /* Touch every byte, so a bad pointer or length shows up. */
  for (i = 0; i < n; i++) {
    volatile uint8_t x = 0;
    size_t j;
    for (j = 0; j < lens[i]; j++) x ^= bufs[i][j];
    (void)x;
    f->sent += lens[i];
  }
  if (f->sent > 4096 && !f->blocked) {
    f->blocked = 1;
    kp_mux_set_send_blocked(m, 1);
  }
}

static void on_stream(kp_mux_t *m, kp_mux_stream_t *s, void *ud) {
  if (kp_mux_stream_id(s) % 7 == 3)
    kp_mux_stream_reset(s); /* refuse some */
  else if (kp_mux_stream_id(s) % 5 != 4)
    kp_mux_stream_accept(s); /* leave some unaccepted */
}

static void on_data(kp_mux_stream_t *s, const uint8_t *data, size_t len,
                    kp_chunk_t *chunk, void *ud) {
  kp_mux_t *m = kp_mux_stream_session(s);
  fz_t *f = ud;
  kp_mux_stream_t *o;
  if (chunk != NULL) {
    kp_chunk_ref(chunk);
    kp_chunk_unref(chunk);
  }
  switch (len > 0 ? data[0] % 12 : 11) {
  case 0:
    kp_mux_stream_write(s, data, len);
    break;
  case 1:
    kp_mux_stream_close(s);
    break;
  case 2:
    kp_mux_stream_reset(s);
    return; /* consume after reset is a no-op; covered below anyway */
  case 3:
    if (kp_mux_open(m, &o) == 0) kp_mux_stream_write(o, data, len);
    break;
  case 4:
    kp_mux_goaway(m, KP_MUX_GOAWAY_NORMAL);
    break;
  case 5:
    kp_mux_ping(m);
    break;
  case 6:
    f->blocked = !f->blocked;
    kp_mux_set_send_blocked(m, f->blocked);
    break;
  case 7:
    kp_mux_stream_consume(s, len / 2); /* keep half: window pressure */
    return;
  case 8:
    kp_mux_stream_write(s, data, len);
    kp_mux_stream_close(s);
    break;
  case 9:
    if (len > 1 && data[1] == 0xEE) kp_mux_close(m, KP_EIO);
    break;
  default:
    break;
  }
  kp_mux_stream_consume(s, len);
}

static void on_eof(kp_mux_stream_t *s, void *ud) {
  if (kp_mux_stream_id(s) & 2) kp_mux_stream_close(s);
}

static void on_writable(kp_mux_stream_t *s, void *ud) {
  static const uint8_t junk[300] = {0};
  kp_mux_stream_write(s, junk, sizeof(junk));
}

static void on_stream_close(kp_mux_stream_t *s, int status, void *ud) {
  /* Calls a stream being closed may still make: all must fail cleanly. */
  kp_mux_stream_write(s, (const uint8_t *)"x", 1);
  kp_mux_stream_close(s);
  kp_mux_stream_reset(s);
  kp_mux_stream_consume(s, 1);
}

static void on_close(kp_mux_t *m, int status, void *ud) {
  ((fz_t *)ud)->closed = 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  kp_mux_config_t cfg;
  kp_mux_callbacks_t cbs;
  kp_mux_t *m;
  fz_t f;
  size_t step, at;
  uint64_t now = 0;
  kp_mux_stream_t *s;
  if (size < 1) return 0;
  memset(&f, 0, sizeof(f));
  kp_mux_config_default(&cfg, data[0] & 1);
  cfg.accept_backlog = 4;
  cfg.max_streams = 16;
  cfg.keepalive_ms = 1000;
  cfg.keepalive_timeout_ms = 500;
  memset(&cbs, 0, sizeof(cbs));
  cbs.send = on_send;
  cbs.on_stream = on_stream;
  cbs.on_data = on_data;
  cbs.on_eof = on_eof;
  cbs.on_writable = on_writable;
  cbs.on_stream_close = on_stream_close;
  cbs.on_close = on_close;
  if (kp_mux_new(&m, &cfg, &cbs, &f) != 0) abort();
  if (data[0] & 2) {
    f.blocked = 1;
    kp_mux_set_send_blocked(m, 1);
  }
  step = (size_t)(data[0] >> 2) + 1;
  kp_mux_tick(m, now);
  /* One stream of our own, so ACK/data for our parity have a target. */
  if (kp_mux_open(m, &s) == 0) kp_mux_stream_write(s, data, size);
  for (at = 1; at < size; at += step) {
    size_t n = size - at < step ? size - at : step;
    /* A copy per piece, so ASan catches reads outside the piece. */
    uint8_t *piece = malloc(n);
    int rc;
    memcpy(piece, data + at, n);
    rc = kp_mux_feed(m, piece, n, NULL);
    free(piece);
    if (rc < 0 && !kp_mux_is_closed(m)) abort();
    if (rc < 0) break;
    now += 700;
    kp_mux_tick(m, now);
  }
  if (!kp_mux_is_closed(m) && (size & 1)) kp_mux_close(m, 0);
  if (kp_mux_is_closed(m) && !f.closed) abort();
  kp_mux_free(m);
  return 0;
}
