/* ws.c - WebSocket (RFC 6455): handshake keys, frame heads, masking and a
 * streaming, validating frame decoder. No I/O: the session layer reads and
 * writes; this file only looks at the bytes it is given. */
#include "internal.h"

#include <limits.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

/* ------------------------------------------------------------------ */
/* Handshake                                                           */
/* ------------------------------------------------------------------ */

int kp_ws_accept_key(const char *key, size_t key_len, char out[29]) {
  /* 4.2.2 step 5.4: concatenate the key as sent (no decoding, no trimming
   * beyond what the HTTP layer did) with the GUID, SHA-1, base64. */
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int md_len = 0;
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  int ok;
  if (ctx == NULL) return KP_ENOMEM;
  ok = EVP_DigestInit_ex(ctx, EVP_sha1(), NULL) &&
       EVP_DigestUpdate(ctx, key, key_len) &&
       EVP_DigestUpdate(ctx, KP_WS_GUID, sizeof(KP_WS_GUID) - 1) &&
       EVP_DigestFinal_ex(ctx, md, &md_len);
  EVP_MD_CTX_free(ctx);
  if (!ok || md_len != 20) return KP_ENOMEM;
  /* 20 bytes -> 28 base64 chars; EVP_EncodeBlock writes the NUL too. */
  EVP_EncodeBlock((unsigned char *)out, md, 20);
  return 0;
}

int kp_ws_client_key(char out[25]) {
  /* 4.1: "a randomly selected 16-byte value ... base64-encoded". It must be
   * unpredictable (10.3 on masking keys applies in spirit), so the CSPRNG. */
  unsigned char nonce[16];
  if (RAND_bytes(nonce, sizeof(nonce)) != 1) return KP_EIO;
  EVP_EncodeBlock((unsigned char *)out, nonce, sizeof(nonce));
  return 0;
}

/* Whether any header line named `name` lists `token`. */
static int ws_headers_have_token(const kp_http_header_t *h, size_t n,
                                 const char *name, const char *token) {
  return kp__headers_list(h, n, name, token, strlen(token));
}

/* The single header named `name`: 1 found, 0 absent, -1 repeated. */
static int ws_single_header(const kp_http_header_t *h, size_t n,
                            const char *name, const kp_http_header_t **out) {
  size_t i;
  *out = NULL;
  for (i = 0; i < n; i++) {
    if (!kp__strieq(h[i].name, h[i].name_len, name)) continue;
    if (*out != NULL) return -1;
    *out = &h[i];
  }
  return *out != NULL;
}

static int ws_is_b64(char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
         (c >= '0' && c <= '9') || c == '+' || c == '/';
}

int kp_ws_check_request(const kp_http_header_t *headers, size_t n,
                        const char **key, size_t *key_len) {
  const kp_http_header_t *k, *v;
  size_t i;
  /* 4.2.1 items 3 and 4. */
  if (!ws_headers_have_token(headers, n, "upgrade", "websocket") ||
      !ws_headers_have_token(headers, n, "connection", "upgrade"))
    return KP_EBADMSG;
  /* Item 5: the key must decode to 16 bytes, i.e. 22 base64 chars and
   * "==". 11.3.1: the field MUST NOT appear more than once. */
  if (ws_single_header(headers, n, "sec-websocket-key", &k) != 1 ||
      k->value_len != 24 || k->value[22] != '=' || k->value[23] != '=')
    return KP_EBADMSG;
  for (i = 0; i < 22; i++)
    if (!ws_is_b64(k->value[i])) return KP_EBADMSG;
  /* Item 6; 4.4: a version we do not speak gets 426 plus the versions we
   * do, so the caller needs to tell this case apart. */
  switch (ws_single_header(headers, n, "sec-websocket-version", &v)) {
  case 1:
    if (v->value_len != 2 || v->value[0] != '1' || v->value[1] != '3')
      return KP_EUNSUPPORTED;
    break;
  default:
    return KP_EBADMSG;
  }
  if (key) *key = k->value;
  if (key_len) *key_len = k->value_len;
  return 0;
}

int kp_ws_check_response(const kp_http_header_t *headers, size_t n,
                         const char *client_key) {
  const kp_http_header_t *a;
  char want[29];
  /* 4.1, client steps 2-4 for the server's handshake. */
  if (!ws_headers_have_token(headers, n, "upgrade", "websocket") ||
      !ws_headers_have_token(headers, n, "connection", "upgrade"))
    return KP_EBADMSG;
  if (ws_single_header(headers, n, "sec-websocket-accept", &a) != 1)
    return KP_EBADMSG;
  if (kp_ws_accept_key(client_key, strlen(client_key), want) != 0)
    return KP_EBADMSG;
  /* Exact, case-sensitive: base64 is case-sensitive. */
  if (a->value_len != 28 || memcmp(a->value, want, 28) != 0)
    return KP_EBADMSG;
  return 0;
}

/* ------------------------------------------------------------------ */
/* UTF-8 (RFC 3629 section 4), incremental                             */
/* ------------------------------------------------------------------ */

/* 8.1: a TEXT message must be valid UTF-8 as a whole, but fragments (and our
 * pieces of them) may split a character, so the validator keeps state:
 *   bits 0-1   continuation bytes still expected (0..3)
 *   bits 8-15  lowest allowed value of the next continuation byte
 *   bits 16-23 highest allowed value of it
 * The narrowed first-continuation ranges (E0: A0-BF, ED: 80-9F, F0: 90-BF,
 * F4: 80-8F) are what rule out overlong forms, surrogates and code points
 * above U+10FFFF (RFC 3629 section 4's syntax). State 0 means "between
 * characters". */
#define KP__U8(need, lo, hi) \
  ((uint32_t)(need) | (uint32_t)(lo) << 8 | (uint32_t)(hi) << 16)

/* Returns 0 if p[0..n) continues the text validly, -1 if not. */
static int ws_utf8_feed(uint32_t *state, const uint8_t *p, size_t n) {
  uint32_t st = *state;
  size_t i = 0;
  while (i < n) {
    uint8_t c = p[i];
    if (st == 0) {
      /* Fast path: skip ASCII 8 bytes at a time. */
      while (n - i >= 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        if (w & UINT64_C(0x8080808080808080)) break;
        i += 8;
      }
      if (i == n) break;
      c = p[i];
      if (c < 0x80) st = 0;
      else if (c >= 0xC2 && c <= 0xDF) st = KP__U8(1, 0x80, 0xBF);
      else if (c == 0xE0) st = KP__U8(2, 0xA0, 0xBF);
      else if (c == 0xED) st = KP__U8(2, 0x80, 0x9F);
      else if (c >= 0xE1 && c <= 0xEF) st = KP__U8(2, 0x80, 0xBF);
      else if (c == 0xF0) st = KP__U8(3, 0x90, 0xBF);
      else if (c == 0xF4) st = KP__U8(3, 0x80, 0x8F);
      else if (c >= 0xF1 && c <= 0xF3) st = KP__U8(3, 0x80, 0xBF);
      else return -1; /* 80-C1 (stray continuation, overlong), F5-FF */
    } else {
      uint32_t need = st & 3;
      if (c < ((st >> 8) & 0xFF) || c > ((st >> 16) & 0xFF)) return -1;
      st = need == 1 ? 0 : KP__U8(need - 1, 0x80, 0xBF);
    }
    i++;
  }
  *state = st;
  return 0;
}

static int ws_utf8_valid(const uint8_t *p, size_t n) {
  uint32_t st = 0;
  return ws_utf8_feed(&st, p, n) == 0 && st == 0;
}

/* ------------------------------------------------------------------ */
/* Frames                                                              */
/* ------------------------------------------------------------------ */

/* The head's length from its first two bytes (5.2): 2, plus 2 or 8 for an
 * extended length, plus 4 for a masking key. */
static size_t ws_head_len(uint8_t b1) {
  size_t n = 2, len7 = b1 & 0x7F;
  if (len7 == 126) n += 2;
  else if (len7 == 127) n += 8;
  if (b1 & 0x80) n += 4;
  return n;
}

int kp_ws_frame_head_decode(const uint8_t *buf, size_t len,
                            kp_ws_frame_head_t *h) {
  size_t need, pos = 2;
  uint64_t plen;
  if (len < 2) return KP_EAGAIN;
  need = ws_head_len(buf[1]);
  if (len < need) return KP_EAGAIN;
  plen = buf[1] & 0x7F;
  if (plen == 126) {
    plen = kp__load16(buf + 2);
    pos = 4;
    /* 5.2: "the minimal number of bytes MUST be used to encode the length" */
    if (plen < 126) return KP_EPROTO;
  } else if (plen == 127) {
    plen = kp__load64(buf + 2);
    pos = 10;
    /* 5.2: "the most significant bit MUST be 0" */
    if (plen >> 63) return KP_EPROTO;
    if (plen <= 0xFFFF) return KP_EPROTO;
  }
  h->fin = buf[0] >> 7;
  h->rsv = (buf[0] >> 4) & 7;
  h->opcode = buf[0] & 0x0F;
  h->masked = buf[1] >> 7;
  if (h->masked) memcpy(h->mask, buf + pos, 4);
  else memset(h->mask, 0, 4);
  h->payload_len = plen;
  h->head_len = need;
  return (int)need;
}

size_t kp_ws_frame_head_encode(uint8_t out[14], int fin, int opcode,
                               const uint8_t *mask, uint64_t payload_len) {
  size_t n = 2;
  uint8_t mbit = mask ? 0x80 : 0;
  if (opcode < 0 || opcode > 15 || (payload_len >> 63)) return 0;
  out[0] = (uint8_t)((fin ? 0x80 : 0) | opcode);
  /* 5.2: always the shortest length form. */
  if (payload_len < 126) {
    out[1] = (uint8_t)(mbit | payload_len);
  } else if (payload_len <= 0xFFFF) {
    out[1] = mbit | 126;
    kp__store16(out + 2, (uint16_t)payload_len);
    n = 4;
  } else {
    out[1] = mbit | 127;
    kp__store64(out + 2, payload_len);
    n = 10;
  }
  if (mask) {
    memcpy(out + n, mask, 4);
    n += 4;
  }
  return n;
}

void kp_ws_mask(uint8_t *data, size_t len, const uint8_t mask[4],
                uint64_t offset) {
  /* 5.3: byte i of the payload is XORed with mask[i % 4]. Rotate the key so
   * that data[0] lines up with key byte 0, then XOR 8 bytes at a time with a
   * word whose *memory* layout is the key twice: memcpy both ways keeps it
   * endian-neutral and alignment-free, and compilers turn it into plain
   * 64-bit loads and stores on x86_64 and ARM64. */
  uint8_t k[8];
  uint64_t kw, w;
  size_t i, r = (size_t)(offset & 3);
  for (i = 0; i < 8; i++) k[i] = mask[(r + i) & 3];
  memcpy(&kw, k, 8);
  while (len >= 32) {
    for (i = 0; i < 32; i += 8) {
      memcpy(&w, data + i, 8);
      w ^= kw;
      memcpy(data + i, &w, 8);
    }
    data += 32;
    len -= 32;
  }
  while (len >= 8) {
    memcpy(&w, data, 8);
    w ^= kw;
    memcpy(data, &w, 8);
    data += 8;
    len -= 8;
  }
  /* 8 is a multiple of 4, so the tail starts at key byte k[0] again. */
  for (i = 0; i < len; i++) data[i] ^= k[i];
}

int kp_ws_close_code_valid(int code) {
  /* 7.4.1 defines 1000-1003 and 1007-1011; 1012-1014 were registered with
   * IANA later (11.7's registry) and are sent by real servers. 1004 is
   * reserved, 1005/1006/1015 "MUST NOT be set as a status code in a Close
   * control frame". 7.4.2: 3000-3999 are for libraries and frameworks,
   * 4000-4999 private; below 1000 and the unassigned rest are invalid. */
  return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
         (code >= 3000 && code <= 4999);
}

int kp_ws_close_payload_encode(uint8_t out[125], int code,
                               const uint8_t *reason, size_t reason_len) {
  if (code == KP_WS_CLOSE_NO_STATUS) /* 5.5.1: an empty body, no reason */
    return reason_len == 0 ? 0 : KP_EINVAL;
  if (!kp_ws_close_code_valid(code) || reason_len > 123 ||
      (reason_len && !ws_utf8_valid(reason, reason_len)))
    return KP_EINVAL;
  kp__store16(out, (uint16_t)code);
  if (reason_len) memcpy(out + 2, reason, reason_len);
  return (int)(2 + reason_len);
}

/* ------------------------------------------------------------------ */
/* Streaming decoder                                                   */
/* ------------------------------------------------------------------ */

enum {
  WS_ST_HEAD = 0,    /* collecting a frame head */
  WS_ST_DATA = 1,    /* passing a data frame's payload through */
  WS_ST_CTRL = 2,    /* collecting a control frame's payload in cbuf */
  WS_ST_CLOSED = 3,  /* a Close frame was delivered */
  WS_ST_FAILED = 4   /* a violation was reported; close_code is set */
};

void kp_ws_decoder_init(kp_ws_decoder_t *d, int is_server,
                        uint64_t max_message) {
  memset(d, 0, sizeof(*d));
  d->is_server = is_server ? 1 : 0;
  d->max_message = max_message;
  d->state = WS_ST_HEAD;
}

static int ws_fail(kp_ws_decoder_t *d, int code) {
  d->state = WS_ST_FAILED;
  d->close_code = code;
  return KP_EPROTO;
}

/* Validates a complete head against the decoder's state (5.1-5.5); returns
 * 0 or the close code to fail with. */
static int ws_check_head(kp_ws_decoder_t *d, const kp_ws_frame_head_t *h) {
  /* 5.2: RSV bits MUST be 0 unless an extension defines them; we negotiate
   * none (no permessage-deflate on the tunnel). */
  if (h->rsv) return KP_WS_CLOSE_PROTOCOL;
  /* 5.1: a server MUST close on an unmasked client frame; a client MUST
   * close on a masked server frame. */
  if (h->masked != d->is_server) return KP_WS_CLOSE_PROTOCOL;
  switch (h->opcode) {
  case KP_WS_OP_CONT:
    /* 5.4: a continuation belongs to an open fragmented message. */
    if (d->msg_opcode == 0) return KP_WS_CLOSE_PROTOCOL;
    break;
  case KP_WS_OP_TEXT:
  case KP_WS_OP_BINARY:
    /* 5.4: fragments of one message are not interleaved with another. */
    if (d->msg_opcode != 0) return KP_WS_CLOSE_PROTOCOL;
    break;
  case KP_WS_OP_CLOSE:
  case KP_WS_OP_PING:
  case KP_WS_OP_PONG:
    /* 5.5: control frames are <= 125 bytes and never fragmented. */
    if (!h->fin || h->payload_len > 125) return KP_WS_CLOSE_PROTOCOL;
    /* 5.5.1: a body, if any, starts with a 2-byte code. */
    if (h->opcode == KP_WS_OP_CLOSE && h->payload_len == 1)
      return KP_WS_CLOSE_PROTOCOL;
    return 0;
  default:
    /* 5.2: "If an unknown opcode is received, the receiving endpoint MUST
     * _Fail the WebSocket Connection_" (0x3-0x7, 0xB-0xF). */
    return KP_WS_CLOSE_PROTOCOL;
  }
  /* 10.4: a limit on message size, checked before any byte is passed up.
   * msg_len <= max_message always holds, so the subtraction is safe. */
  if (d->max_message &&
      h->payload_len > d->max_message - d->msg_len)
    return KP_WS_CLOSE_TOO_BIG;
  return 0;
}

/* Delivers a complete control frame from cbuf. */
static int ws_control_event(kp_ws_decoder_t *d, kp_ws_event_t *ev) {
  ev->data = d->cbuf;
  ev->len = d->clen;
  d->state = WS_ST_HEAD;
  switch (d->cur.opcode) {
  case KP_WS_OP_PING:
    ev->type = KP_WS_EV_PING;
    return 0;
  case KP_WS_OP_PONG:
    ev->type = KP_WS_EV_PONG;
    return 0;
  default:
    break;
  }
  ev->type = KP_WS_EV_CLOSE;
  if (d->clen == 0) {
    ev->close_code = KP_WS_CLOSE_NO_STATUS; /* 7.1.5 */
  } else {
    ev->close_code = kp__load16(d->cbuf);
    if (!kp_ws_close_code_valid(ev->close_code))
      return ws_fail(d, KP_WS_CLOSE_PROTOCOL);
    /* 5.5.1: the reason is UTF-8; 8.1 makes invalid text a 1007. */
    if (!ws_utf8_valid(d->cbuf + 2, d->clen - 2))
      return ws_fail(d, KP_WS_CLOSE_INVALID_DATA);
    ev->data = d->cbuf + 2;
    ev->len = d->clen - 2;
  }
  d->state = WS_ST_CLOSED;
  return 0;
}

int kp_ws_decode(kp_ws_decoder_t *d, uint8_t *in, size_t len,
                 kp_ws_event_t *ev) {
  size_t pos = 0;
  memset(ev, 0, sizeof(*ev));
  if (d->state == WS_ST_FAILED) return KP_EPROTO;
  if (d->state == WS_ST_CLOSED) return len ? KP_ECLOSED : 0;
  /* The count is returned as an int; a larger input is simply taken in
   * more than one call. */
  if (len > (size_t)INT_MAX) len = (size_t)INT_MAX;

  for (;;) {
    if (d->state == WS_ST_HEAD) {
      const uint8_t *hp;
      size_t need;
      int rc, code;
      if (d->hlen == 0 && len - pos >= 2 &&
          len - pos >= ws_head_len(in[pos + 1])) {
        /* Common case: the whole head is in the input; no copy. */
        hp = in + pos;
        need = ws_head_len(in[pos + 1]);
        pos += need;
      } else {
        /* A head split across calls: gather it in hbuf. The first two
         * bytes say how long it is. */
        while (pos < len && d->hlen < 2) d->hbuf[d->hlen++] = in[pos++];
        if (d->hlen < 2) return (int)pos;
        need = ws_head_len(d->hbuf[1]);
        while (pos < len && d->hlen < need) d->hbuf[d->hlen++] = in[pos++];
        if (d->hlen < need) return (int)pos;
        hp = d->hbuf;
        d->hlen = 0;
      }
      rc = kp_ws_frame_head_decode(hp, need, &d->cur);
      if (rc < 0) return ws_fail(d, KP_WS_CLOSE_PROTOCOL);
      code = ws_check_head(d, &d->cur);
      if (code) return ws_fail(d, code);
      d->cur_done = 0;
      if (d->cur.opcode & 0x8) {
        d->clen = 0;
        d->state = WS_ST_CTRL;
      } else {
        if (d->cur.opcode != KP_WS_OP_CONT) {
          d->msg_opcode = d->cur.opcode;
          d->msg_len = 0;
          d->utf8 = 0;
        }
        d->state = WS_ST_DATA;
        /* An empty non-final fragment carries nothing to report. */
        if (d->cur.payload_len == 0 && !d->cur.fin) {
          d->state = WS_ST_HEAD;
          continue;
        }
      }
    }

    if (d->state == WS_ST_CTRL) {
      size_t want = (size_t)d->cur.payload_len - d->clen;
      size_t n = KP__MIN(want, len - pos);
      if (n) {
        memcpy(d->cbuf + d->clen, in + pos, n);
        if (d->cur.masked) kp_ws_mask(d->cbuf + d->clen, n, d->cur.mask, d->clen);
        d->clen += n;
        pos += n;
      }
      if (d->clen < d->cur.payload_len) return (int)pos;
      {
        int rc = ws_control_event(d, ev);
        if (rc < 0) {
          memset(ev, 0, sizeof(*ev));
          return rc;
        }
      }
      return (int)pos;
    }

    /* WS_ST_DATA: pass the payload through in place. */
    {
      uint64_t left = d->cur.payload_len - d->cur_done;
      size_t n = (size_t)KP__MIN(left, (uint64_t)(len - pos));
      int end;
      if (n == 0 && left != 0) return (int)pos; /* need more input */
      if (d->cur.masked) kp_ws_mask(in + pos, n, d->cur.mask, d->cur_done);
      /* 8.1: TEXT must be UTF-8; checked as it arrives so a bad byte is
       * never handed up, and completeness is checked at the message end. */
      if (d->msg_opcode == KP_WS_OP_TEXT &&
          ws_utf8_feed(&d->utf8, in + pos, n) != 0)
        return ws_fail(d, KP_WS_CLOSE_INVALID_DATA);
      d->cur_done += n;
      d->msg_len += n;
      end = d->cur_done == d->cur.payload_len;
      ev->type = KP_WS_EV_DATA;
      ev->opcode = d->msg_opcode;
      ev->data = in + pos;
      ev->len = n;
      ev->message_end = end && d->cur.fin;
      pos += n;
      if (end) {
        d->state = WS_ST_HEAD;
        if (d->cur.fin) {
          if (d->msg_opcode == KP_WS_OP_TEXT && d->utf8 != 0) {
            memset(ev, 0, sizeof(*ev));
            return ws_fail(d, KP_WS_CLOSE_INVALID_DATA);
          }
          d->msg_opcode = 0;
          d->msg_len = 0;
        }
      }
      return (int)pos;
    }
  }
}
