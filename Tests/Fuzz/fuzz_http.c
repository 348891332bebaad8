/* fuzz_http.c - libFuzzer target for the HTTP/1.1 framing (http.c).
 *
 * The input is parsed as a request head and as a response head; when one
 * parses, the bytes after it are scanned as that message's body, once in
 * small pieces with payload ranges and once in a single call without, and
 * the two runs must agree. The input is also scanned as a bare chunked
 * body, so the chunked decoder is reached without a valid head first.
 * Invariants are checked with abort(); ASan/UBSan catch the rest.
 */
#include "kopilot.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define CHECK(cond)  \
  do {               \
    if (!(cond)) abort(); \
  } while (0)

static int inside(const void *p, size_t n, const uint8_t *base, size_t len) {
  const uint8_t *q = (const uint8_t *)p;
  return q != NULL && q >= base && q + n <= base + len;
}

static void check_head(const kp_http_head_t *h, const uint8_t *buf, int r,
                       int is_request) {
  size_t k;
  size_t n = (size_t)r;
  CHECK(h->minor_version == 0 || h->minor_version == 1);
  CHECK(h->num_headers <= KP_HTTP_MAX_HEADERS);
  CHECK(h->content_length >= -1);
  CHECK(!(h->flags & KP_HTTP_F_CONTENT_LENGTH) == (h->content_length < 0));
  CHECK(!((h->flags & KP_HTTP_F_CHUNKED) &&
          (h->flags & KP_HTTP_F_CONTENT_LENGTH)));
  if (is_request) {
    CHECK(inside(h->method, h->method_len, buf, n) && h->method_len > 0);
    CHECK(inside(h->target, h->target_len, buf, n) && h->target_len > 0);
  } else {
    CHECK(h->status >= 100 && h->status <= 999);
    CHECK(h->reason_len == 0 || inside(h->reason, h->reason_len, buf, n));
    CHECK(!(h->flags & KP_HTTP_F_EXPECT_CONTINUE));
  }
  for (k = 0; k < h->num_headers; k++) {
    const kp_http_header_t *f = &h->headers[k];
    CHECK(f->name_len > 0 && inside(f->name, f->name_len, buf, n));
    CHECK(f->value_len == 0 || inside(f->value, f->value_len, buf, n));
    CHECK(memchr(f->value, '\r', f->value_len) == NULL);
    CHECK(memchr(f->value, '\n', f->value_len) == NULL);
    CHECK(memchr(f->value, 0, f->value_len) == NULL);
  }
  CHECK(kp_http_find_header(h, "content-length") != NULL ||
        !(h->flags & KP_HTTP_F_CONTENT_LENGTH));
}

typedef struct scan_result {
  int err;         /* 0 or the error */
  size_t consumed; /* body bytes */
  int done;
  uint64_t payload; /* payload bytes seen (piecewise run only) */
} scan_result_t;

/* Scans in[0..len) in pieces of `step` bytes, asking for payload ranges. */
static scan_result_t scan_pieces(kp_http_body_t b, const uint8_t *in,
                                 size_t len, size_t step) {
  scan_result_t res = {0, 0, 0, 0};
  size_t off = 0;
  while (off < len && !b.done) {
    size_t piece = len - off < step ? len - off : step;
    size_t used = 0;
    while (used < piece && !b.done) {
      const uint8_t *d = (const uint8_t *)1;
      size_t dl = 7;
      const uint8_t *p = in + off + used;
      int r = kp_http_body_scan(&b, p, piece - used, &d, &dl);
      if (r < 0) {
        CHECK(r == KP_EBADMSG);
        res.err = r;
        res.consumed = off + used;
        return res;
      }
      CHECK((size_t)r <= piece - used);
      if (dl > 0) {
        /* The payload range lies inside what was consumed and ends it
         * (the scanner stops after each range). */
        CHECK(inside(d, dl, p, (size_t)r));
        CHECK(d + dl == p + r || b.mode != KP_HTTP_BODY_CHUNKED);
        res.payload += dl;
      } else {
        CHECK(d == NULL);
      }
      /* Short of the piece only when done or stopping after a range. */
      CHECK((size_t)r == piece - used || b.done || dl > 0);
      if (r == 0) CHECK(b.done || piece - used == 0);
      used += (size_t)r;
      if (r == 0) break;
    }
    off += used;
    if (used < piece) break; /* done */
  }
  res.consumed = off;
  res.done = b.done;
  if (b.mode == KP_HTTP_BODY_LENGTH || b.mode == KP_HTTP_BODY_UNTIL_CLOSE)
    CHECK(res.payload == res.consumed);
  if (b.mode == KP_HTTP_BODY_CHUNKED) CHECK(res.payload <= res.consumed);
  return res;
}

/* The same body in one call without payload ranges. */
static scan_result_t scan_whole(kp_http_body_t b, const uint8_t *in,
                                size_t len) {
  scan_result_t res = {0, 0, 0, 0};
  int r = kp_http_body_scan(&b, in, len, NULL, NULL);
  if (r < 0) {
    CHECK(r == KP_EBADMSG);
    res.err = r;
    return res;
  }
  CHECK((size_t)r <= len);
  CHECK((size_t)r == len || b.done);
  res.consumed = (size_t)r;
  res.done = b.done;
  /* Once done, nothing more is taken. */
  if (b.done && len > (size_t)r)
    CHECK(kp_http_body_scan(&b, in + r, len - (size_t)r, NULL, NULL) == 0);
  return res;
}

static void check_body(const kp_http_body_t *init, const uint8_t *in,
                       size_t len, size_t step) {
  scan_result_t a = scan_pieces(*init, in, len, step);
  scan_result_t w = scan_whole(*init, in, len);
  CHECK(a.err == w.err);
  if (!a.err) {
    CHECK(a.consumed == w.consumed);
    CHECK(a.done == w.done);
  }
}

static void one_head(const uint8_t *data, size_t size, int is_request,
                     size_t max_head, int head_method, size_t step) {
  static kp_http_head_t h, h2;
  kp_http_body_t body;
  int r = is_request ? kp_http_parse_request(data, size, max_head, &h)
                     : kp_http_parse_response(data, size, max_head, &h);
  if (max_head == 0) max_head = KP_HTTP_DEFAULT_MAX_HEAD;
  if (r < 0) {
    CHECK(r == KP_EAGAIN || r == KP_EBADMSG || r == KP_EHEADTOOBIG);
    if (r == KP_EAGAIN) CHECK(size < max_head);
    return;
  }
  CHECK(r > 0 && (size_t)r <= size && (size_t)r <= max_head);
  check_head(&h, data, r, is_request);
  /* Stateless re-scan: the head alone parses the same, and a prefix one
   * byte short (or half of it) only needs more. */
  {
    int r2 = is_request ? kp_http_parse_request(data, (size_t)r, max_head, &h2)
                        : kp_http_parse_response(data, (size_t)r, max_head, &h2);
    CHECK(r2 == r && h2.flags == h.flags && h2.num_headers == h.num_headers &&
          h2.content_length == h.content_length);
    r2 = is_request ? kp_http_parse_request(data, (size_t)r - 1, max_head, &h2)
                    : kp_http_parse_response(data, (size_t)r - 1, max_head, &h2);
    CHECK(r2 == KP_EAGAIN);
    r2 = is_request ? kp_http_parse_request(data, (size_t)r / 2, max_head, &h2)
                    : kp_http_parse_response(data, (size_t)r / 2, max_head, &h2);
    CHECK(r2 == KP_EAGAIN);
  }
  kp_http_body_init(&body, &h, is_request, head_method);
  CHECK(body.mode <= KP_HTTP_BODY_UNTIL_CLOSE);
  if (is_request) CHECK(body.mode != KP_HTTP_BODY_UNTIL_CLOSE);
  check_body(&body, data + r, size - (size_t)r, step);
}

/* kp_http_check_hub_fields: whatever it accepts, appended to a head, is
 * read back by the parser as exactly that many more fields, each one an
 * identity field or Audit-ID: accepted lines can never frame or route. */
static void hub_fields(const uint8_t *data, size_t size) {
  static const char start[] = "GET / HTTP/1.1\r\nHost: h\r\n";
  size_t k, lines = 0, n = sizeof(start) - 1;
  kp_http_head_t h;
  uint8_t *buf;
  int r;
  if (kp_http_check_hub_fields((const char *)data, size) != 0) return;
  for (k = 0; k < size; k++) lines += data[k] == '\n';
  if ((buf = malloc(n + size + 2)) == NULL) return;
  memcpy(buf, start, n);
  memcpy(buf + n, data, size);
  memcpy(buf + n + size, "\r\n", 2);
  r = kp_http_parse_request(buf, n + size + 2, 1 << 20, &h);
  if (lines + 1 <= KP_HTTP_MAX_HEADERS) {
    CHECK(r == (int)(n + size + 2));
    CHECK(h.num_headers == lines + 1);
    for (k = 1; k < h.num_headers; k++)
      CHECK(kp_http_is_identity_header(h.headers[k].name, h.headers[k].name_len) ||
            (h.headers[k].name_len == 8 &&
             strncasecmp(h.headers[k].name, "audit-id", 8) == 0));
    CHECK(h.content_length == -1 && !(h.flags & KP_HTTP_F_CHUNKED));
  }
  free(buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  kp_http_head_t synthetic;
  kp_http_body_t body;
  size_t step = 1 + (size ? data[size - 1] % 16 : 0);
  int head_method = size && (data[0] & 1);

  one_head(data, size, 1, 0, 0, step);
  one_head(data, size, 0, 0, head_method, step);
  /* A small limit makes EHEADTOOBIG reachable with small inputs. */
  one_head(data, size, 1, 1 + size / 2, 0, step);

  /* The chunked decoder on its own. */
  memset(&synthetic, 0, sizeof(synthetic));
  synthetic.content_length = -1;
  synthetic.flags = KP_HTTP_F_CHUNKED;
  kp_http_body_init(&body, &synthetic, 1, 0);
  CHECK(body.mode == KP_HTTP_BODY_CHUNKED && !body.done);
  check_body(&body, data, size, step);
  hub_fields(data, size);
  return 0;
}
