/* fuzz_ws.c - libFuzzer target for the WebSocket decoder (ws.c).
 *
 * Input: byte 0 picks max_message (bits 0-1), bytes 1 and 2 pick two cut
 * points, the rest is the byte stream. For both roles the stream is decoded
 * whole, in three pieces at the cut points, and (when short) one byte at a
 * time; the three runs must agree on every completed event and on the
 * outcome. Each run checks the decoder's promises (consumed counts, pointer
 * ranges, close codes, UTF-8 of TEXT messages, max_message) and aborts on a
 * broken one. Seeds: Tests/Fuzz/seeds/ws/ (the unit-test vectors with a
 * 3-byte prefix). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kopilot.h"

#define CHECK(c)                                                   \
  do {                                                             \
    if (!(c)) {                                                    \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #c); \
      abort();                                                     \
    }                                                              \
  } while (0)

/* A growable byte log: the canonical record of a run's completed events. */
typedef struct {
  uint8_t *p;
  size_t len, cap;
} blog_t;

static void blog_put(blog_t *b, const void *d, size_t n) {
  if (b->len + n > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n) cap *= 2;
    b->p = realloc(b->p, cap);
    CHECK(b->p != NULL);
    b->cap = cap;
  }
  if (n) memcpy(b->p + b->len, d, n);
  b->len += n;
}

/* An independent UTF-8 check (decode each code point and test its value),
 * deliberately written differently from ws.c's range-table validator. */
static int utf8_ok(const uint8_t *s, size_t n) {
  size_t i = 0;
  while (i < n) {
    uint32_t cp;
    size_t k, more;
    uint8_t c = s[i];
    if (c < 0x80) { i++; continue; }
    if ((c & 0xE0) == 0xC0) { cp = c & 0x1F; more = 1; }
    else if ((c & 0xF0) == 0xE0) { cp = c & 0x0F; more = 2; }
    else if ((c & 0xF8) == 0xF0) { cp = c & 0x07; more = 3; }
    else return 0;
    if (i + more >= n) return 0; /* truncated */
    for (k = 1; k <= more; k++) {
      if ((s[i + k] & 0xC0) != 0x80) return 0;
      cp = cp << 6 | (s[i + k] & 0x3F);
    }
    if ((more == 1 && cp < 0x80) || (more == 2 && cp < 0x800) ||
        (more == 3 && cp < 0x10000))
      return 0; /* overlong */
    if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    i += more + 1;
  }
  return 1;
}

typedef struct {
  blog_t log;     /* completed events */
  blog_t msg;     /* the open data message */
  int msg_op;
  int rc;         /* 0 or the first error */
  int close_code;
  int closed;     /* a CLOSE event was seen */
} run_t;

static void run_free(run_t *r) {
  free(r->log.p);
  free(r->msg.p);
}

static void on_event(run_t *r, const kp_ws_decoder_t *d, uint64_t max,
                     const uint8_t *in, size_t inlen, const kp_ws_event_t *ev) {
  uint8_t rec[11];
  CHECK(!r->closed);
  switch (ev->type) {
  case KP_WS_EV_DATA:
    CHECK(ev->opcode == KP_WS_OP_TEXT || ev->opcode == KP_WS_OP_BINARY);
    CHECK(ev->len == 0 || (ev->data >= in && ev->data + ev->len <= in + inlen));
    if (r->msg.len == 0 && r->msg_op == 0) r->msg_op = ev->opcode;
    CHECK(r->msg_op == ev->opcode);
    blog_put(&r->msg, ev->data, ev->len);
    if (max) CHECK(r->msg.len <= max);
    if (ev->message_end) {
      if (ev->opcode == KP_WS_OP_TEXT) CHECK(utf8_ok(r->msg.p, r->msg.len));
      rec[0] = 'D';
      rec[1] = (uint8_t)ev->opcode;
      memcpy(rec + 2, &r->msg.len, sizeof(size_t) < 8 ? sizeof(size_t) : 8);
      blog_put(&r->log, rec, 10);
      blog_put(&r->log, r->msg.p, r->msg.len);
      r->msg.len = 0;
      r->msg_op = 0;
    }
    break;
  case KP_WS_EV_PING:
  case KP_WS_EV_PONG:
  case KP_WS_EV_CLOSE:
    CHECK(ev->len <= 125);
    CHECK(ev->len == 0 ||
          (ev->data >= d->cbuf && ev->data + ev->len <= d->cbuf + sizeof(d->cbuf)));
    if (ev->type == KP_WS_EV_CLOSE) {
      CHECK(ev->close_code == KP_WS_CLOSE_NO_STATUS ? ev->len == 0
                                                    : kp_ws_close_code_valid(ev->close_code));
      CHECK(utf8_ok(ev->data, ev->len));
      r->closed = 1;
    }
    rec[0] = (uint8_t)ev->type;
    rec[1] = (uint8_t)(ev->close_code >> 8);
    rec[2] = (uint8_t)ev->close_code;
    rec[3] = (uint8_t)ev->len;
    blog_put(&r->log, rec, 4);
    blog_put(&r->log, ev->data, ev->len);
    break;
  default:
    CHECK(0);
  }
}

/* Decodes buf[0..n) (a private copy: the decoder unmasks in place) in pieces
 * ending at cuts[0..ncuts) and n. */
static void run(run_t *r, int server, uint64_t max, uint8_t *buf, size_t n,
                const size_t *cuts, size_t ncuts) {
  kp_ws_decoder_t d;
  size_t start = 0, c;
  memset(r, 0, sizeof(*r));
  kp_ws_decoder_init(&d, server, max);
  for (c = 0; c <= ncuts && r->rc == 0; c++) {
    size_t end = c < ncuts ? cuts[c] : n;
    size_t off = start;
    while (r->rc == 0) {
      kp_ws_event_t ev;
      int rc = kp_ws_decode(&d, buf + off, end - off, &ev);
      if (rc < 0) {
        r->rc = rc;
        r->close_code = d.close_code;
        if (rc == KP_EPROTO) {
          CHECK(d.close_code == 1002 || d.close_code == 1007 ||
                (d.close_code == 1009 && max != 0));
          /* Errors are sticky. */
          CHECK(kp_ws_decode(&d, buf + off, end - off, &ev) == KP_EPROTO);
        } else {
          CHECK(rc == KP_ECLOSED && r->closed && end > off);
        }
        break;
      }
      CHECK((size_t)rc <= end - off);
      off += (size_t)rc;
      if (ev.type == KP_WS_EV_NONE) {
        CHECK(off == end); /* "need more" means all of it was taken */
        break;
      }
      on_event(r, &d, max, buf, n, &ev);
    }
    start = end;
  }
}

static void compare(const run_t *a, const run_t *b) {
  CHECK(a->rc == b->rc);
  CHECK(a->close_code == b->close_code);
  CHECK(a->log.len == b->log.len);
  CHECK(a->log.len == 0 || memcmp(a->log.p, b->log.p, a->log.len) == 0);
  /* Without an error every payload byte that arrived was handed up, so the
   * open message's bytes agree too. (After an error a run fed in pieces may
   * have passed up a valid prefix the whole run never delivered.) */
  if (a->rc == 0) {
    CHECK(a->msg.len == b->msg.len);
    CHECK(a->msg.len == 0 || memcmp(a->msg.p, b->msg.p, a->msg.len) == 0);
  }
}

/* Frame head codec: what decodes re-encodes to the same bytes (minimal
 * lengths are enforced on both sides), and masking matches byte-wise XOR. */
static void check_head_and_mask(const uint8_t *data, size_t size) {
  kp_ws_frame_head_t h, h2;
  uint8_t out[14];
  int rc = kp_ws_frame_head_decode(data, size, &h);
  if (rc > 0) {
    size_t n = kp_ws_frame_head_encode(out, h.fin, h.opcode, h.masked ? h.mask : NULL,
                                       h.payload_len);
    CHECK(n == (size_t)rc && n == h.head_len);
    /* RSV bits are not encoded by us; compare with them cleared. */
    CHECK(out[0] == (data[0] & 0x8F));
    CHECK(memcmp(out + 1, data + 1, n - 1) == 0);
    CHECK(kp_ws_frame_head_decode(out, n, &h2) == rc);
    CHECK(h2.payload_len == h.payload_len && h2.opcode == h.opcode);
  } else {
    CHECK(rc == KP_EAGAIN || rc == KP_EPROTO);
  }
  if (size >= 5) {
    size_t n = size - 5, i;
    uint64_t offset = data[4];
    uint8_t *a = malloc(n + 1), *b = malloc(n + 1);
    CHECK(a && b);
    memcpy(a, data + 5, n);
    memcpy(b, data + 5, n);
    kp_ws_mask(a, n, data, offset);
    for (i = 0; i < n; i++) b[i] ^= data[(i + offset) & 3];
    CHECK(n == 0 || memcmp(a, b, n) == 0);
    free(a);
    free(b);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  static const uint64_t maxes[4] = {0, 16, 200, 70000};
  uint64_t max;
  size_t n, cuts[2], *ones = NULL, i;
  uint8_t *buf;
  int server;
  if (size < 3) return 0;
  check_head_and_mask(data + 3, size - 3);
  max = maxes[data[0] & 3];
  n = size - 3;
  cuts[0] = (size_t)data[1] * n / 256;
  cuts[1] = cuts[0] + (size_t)data[2] * (n - cuts[0]) / 256;
  buf = malloc(n + 1);
  CHECK(buf != NULL);
  if (n <= 1024) {
    ones = malloc((n + 1) * sizeof(size_t));
    CHECK(ones != NULL);
    for (i = 0; i < n; i++) ones[i] = i + 1;
  }
  for (server = 0; server <= 1; server++) {
    run_t whole, split, bytes;
    memcpy(buf, data + 3, n);
    run(&whole, server, max, buf, n, NULL, 0);
    memcpy(buf, data + 3, n);
    run(&split, server, max, buf, n, cuts, 2);
    compare(&whole, &split);
    run_free(&split);
    if (ones) {
      memcpy(buf, data + 3, n);
      run(&bytes, server, max, buf, n, ones, n);
      compare(&whole, &bytes);
      run_free(&bytes);
    }
    run_free(&whole);
  }
  free(ones);
  free(buf);
  return 0;
}
