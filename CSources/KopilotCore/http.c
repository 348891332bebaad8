/* http.c - HTTP/1.1 message framing (RFC 9112), no I/O, no allocation.
 *
 * The head parser is stateless: each call re-scans buf from the start and
 * either finds a complete head or says "need more". That keeps the caller's
 * state to the bytes it already buffers (as picohttpparser does). The cost is
 * O(len) per call, so a peer trickling one byte per read costs
 * O(max_head^2) in total; the session layer bounds that with its head
 * timeout (slowloris), and typical reads deliver a whole head at once.
 *
 * The parser is strict where leniency lets two parsers disagree about where
 * a message ends (request smuggling, RFC 9112 §11.2): CRLF line ends only,
 * no obs-fold, no whitespace before the colon, one Content-Length value,
 * never Transfer-Encoding together with Content-Length in a request.
 */
#include "internal.h"

#include <limits.h>
#include <strings.h>

/* ------------------------------------------------------------------ */
/* Character classes (RFC 9110 §5.6.2, §5.5)                           */
/* ------------------------------------------------------------------ */

/* tchar = "!" / "#" / "$" / "%" / "&" / "'" / "*" / "+" / "-" / "." /
 *         "^" / "_" / "`" / "|" / "~" / DIGIT / ALPHA */
static int kp__is_tchar(uint8_t c) {
  if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
      (c >= '0' && c <= '9'))
    return 1;
  switch (c) {
  case '!': case '#': case '$': case '%': case '&': case '\'': case '*':
  case '+': case '-': case '.': case '^': case '_': case '`': case '|':
  case '~':
    return 1;
  default:
    return 0;
  }
}

/* field-vchar / SP / HTAB (RFC 9110 §5.5). obs-text (0x80-0xFF) is let
 * through as opaque bytes; every other control byte, NUL and DEL included,
 * is rejected rather than replaced, since a proxy forwards the raw bytes. */
static int kp__is_field_char(uint8_t c) {
  return c == '\t' || (c >= 0x20 && c != 0x7f);
}

static int kp__is_ows(uint8_t c) { return c == ' ' || c == '\t'; }

static int kp__hexval(uint8_t c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* ------------------------------------------------------------------ */
/* Lines                                                               */
/* ------------------------------------------------------------------ */

/* Finds the CRLF that ends the line starting at pos. On success *eol is the
 * index of the CR. A bare LF, or a CR not followed by LF, is an error: RFC
 * 9112 §2.2 lets a recipient accept a bare LF, but a proxy that does so in
 * front of a server that does not (or the reverse) disagrees with it about
 * line boundaries, so we require CRLF. KP_EAGAIN: no line end yet. */
static int kp__find_eol(const uint8_t *buf, size_t pos, size_t end,
                        size_t *eol) {
  size_t i;
  for (i = pos; i < end; i++) {
    uint8_t c = buf[i];
    if (c == '\n') return KP_EBADMSG;
    if (c == '\r') {
      if (i + 1 >= end) return KP_EAGAIN;
      if (buf[i + 1] != '\n') return KP_EBADMSG;
      *eol = i;
      return 0;
    }
  }
  return KP_EAGAIN;
}

/* "HTTP/1.0" or "HTTP/1.1" at p (8 bytes; the caller checked the length).
 * HTTP-version is case-sensitive (RFC 9112 §2.3). Other versions, 1.2 and
 * 2.0 included, are refused: the tunnel speaks HTTP/1.x only. */
static int kp__parse_version(const uint8_t *p) {
  if (memcmp(p, "HTTP/1.", 7) != 0) return KP_EBADMSG;
  if (p[7] == '0') return 0;
  if (p[7] == '1') return 1;
  return KP_EBADMSG;
}

/* request-line = method SP request-target SP HTTP-version (RFC 9112 §3).
 * Exactly one SP between the parts: §3 allows a lenient recipient to split
 * on any whitespace, which is again a disagreement we choose not to have. */
static int kp__parse_request_line(const uint8_t *buf, size_t p, size_t eol,
                                  kp_http_head_t *head) {
  size_t i = p, t;
  int v;
  while (i < eol && kp__is_tchar(buf[i])) i++;
  if (i == p || i >= eol || buf[i] != ' ') return KP_EBADMSG;
  head->method = (const char *)buf + p;
  head->method_len = i - p;
  t = ++i;
  /* request-target (§3.2): its forms hold no SP or CTL; obs-text is let
   * through for servers that take raw UTF-8 paths. */
  while (i < eol && buf[i] > 0x20 && buf[i] != 0x7f) i++;
  if (i == t || i >= eol || buf[i] != ' ') return KP_EBADMSG;
  head->target = (const char *)buf + t;
  head->target_len = i - t;
  i++;
  if (eol - i != 8) return KP_EBADMSG;
  if ((v = kp__parse_version(buf + i)) < 0) return v;
  head->minor_version = v;
  return 0;
}

/* status-line = HTTP-version SP status-code SP [ reason-phrase ]
 * (RFC 9112 §4). status-code is 3DIGIT; we take 100-999 since 0xx is not a
 * class. Some servers drop the SP before an empty reason; that costs nothing
 * to accept because the line end is unambiguous. */
static int kp__parse_status_line(const uint8_t *buf, size_t p, size_t eol,
                                 kp_http_head_t *head) {
  size_t i;
  int v;
  if (eol - p < 12) return KP_EBADMSG;
  if ((v = kp__parse_version(buf + p)) < 0) return v;
  head->minor_version = v;
  i = p + 8;
  if (buf[i] != ' ') return KP_EBADMSG;
  i++;
  if (buf[i] < '1' || buf[i] > '9' || buf[i + 1] < '0' || buf[i + 1] > '9' ||
      buf[i + 2] < '0' || buf[i + 2] > '9')
    return KP_EBADMSG;
  head->status = (buf[i] - '0') * 100 + (buf[i + 1] - '0') * 10 +
                 (buf[i + 2] - '0');
  i += 3;
  head->reason = (const char *)buf + i;
  head->reason_len = 0;
  if (i == eol) return 0;
  if (buf[i] != ' ') return KP_EBADMSG; /* e.g. a fourth digit */
  i++;
  head->reason = (const char *)buf + i;
  head->reason_len = eol - i;
  /* reason-phrase = 1*( HTAB / SP / VCHAR / obs-text ) */
  for (; i < eol; i++)
    if (!kp__is_field_char(buf[i])) return KP_EBADMSG;
  return 0;
}

/* field-line = field-name ":" OWS field-value OWS (RFC 9112 §5). */
static int kp__parse_field_line(const uint8_t *buf, size_t p, size_t eol,
                                kp_http_header_t *h) {
  size_t i = p, vs, ve;
  /* A line starting with whitespace is obs-fold (§5.2), or whitespace
   * between the start-line and the first field (§2.2); both are rejected. */
  while (i < eol && kp__is_tchar(buf[i])) i++;
  /* No whitespace between name and colon (§5.1: MUST reject with 400). */
  if (i == p || i >= eol || buf[i] != ':') return KP_EBADMSG;
  h->name = (const char *)buf + p;
  h->name_len = i - p;
  i++;
  while (i < eol && kp__is_ows(buf[i])) i++;
  vs = i;
  ve = eol;
  for (; i < eol; i++)
    if (!kp__is_field_char(buf[i])) return KP_EBADMSG;
  while (ve > vs && kp__is_ows(buf[ve - 1])) ve--;
  h->value = (const char *)buf + vs;
  h->value_len = ve - vs;
  return 0;
}

/* ------------------------------------------------------------------ */
/* Field semantics                                                     */
/* ------------------------------------------------------------------ */

/* Iterates the elements of a comma-separated list (RFC 9110 §5.6.1),
 * OWS-trimmed. Empty elements are returned too (as length 0): each caller
 * decides whether they are harmless. Returns 0 when the list is done. */
static int kp__list_next(const char *v, size_t len, size_t *pos,
                         const char **e, size_t *elen) {
  size_t i = *pos, s, t;
  if (i > len) return 0;
  s = i;
  while (i < len && v[i] != ',') i++;
  t = i;
  while (s < t && kp__is_ows((uint8_t)v[s])) s++;
  while (t > s && kp__is_ows((uint8_t)v[t - 1])) t--;
  *e = v + s;
  *elen = t - s;
  *pos = i + 1; /* past the comma, or len + 1 after the last element */
  return 1;
}

static const char *rebase1(const char *p, const uint8_t *from, uint8_t *to) {
  return p ? (const char *)to + (p - (const char *)from) : NULL;
}

void kp__http_head_rebase(kp_http_head_t *h, const uint8_t *from,
                          uint8_t *to) {
  size_t i;
  h->method = rebase1(h->method, from, to);
  h->target = rebase1(h->target, from, to);
  h->reason = rebase1(h->reason, from, to);
  for (i = 0; i < h->num_headers; i++) {
    h->headers[i].name = rebase1(h->headers[i].name, from, to);
    h->headers[i].value = rebase1(h->headers[i].value, from, to);
  }
}

int kp__headers_list(const kp_http_header_t *h, size_t n, const char *name,
                     const char *token, size_t token_len) {
  size_t i;
  for (i = 0; i < n; i++) {
    size_t pos = 0, elen;
    const char *e;
    if (!kp__strieq(h[i].name, h[i].name_len, name)) continue;
    while (kp__list_next(h[i].value, h[i].value_len, &pos, &e, &elen))
      if (elen == token_len && strncasecmp(e, token, token_len) == 0) return 1;
  }
  return 0;
}

/* Content-Length = 1*DIGIT (RFC 9110 §8.6). A list of identical values is
 * accepted as the spec allows (it is what some proxies produce when they
 * merge duplicate fields); differing values, an empty element, a sign or
 * a value past INT64_MAX are errors (RFC 9112 §6.3 item 5). */
static int kp__content_length(const kp_http_header_t *h, int64_t *cl) {
  size_t pos = 0, elen, i;
  const char *e;
  while (kp__list_next(h->value, h->value_len, &pos, &e, &elen)) {
    int64_t v = 0;
    if (elen == 0) return KP_EBADMSG;
    for (i = 0; i < elen; i++) {
      int d = e[i] - '0';
      if (d < 0 || d > 9) return KP_EBADMSG;
      if (v > (INT64_MAX - d) / 10) return KP_EBADMSG;
      v = v * 10 + d;
    }
    if (*cl >= 0 && *cl != v) return KP_EBADMSG;
    *cl = v;
  }
  return 0;
}

#define KP__CONN_CLOSE 1
#define KP__CONN_KEEP_ALIVE 2
#define KP__CONN_UPGRADE 4

static int kp__derive(kp_http_head_t *head, int is_request) {
  size_t k;
  int64_t cl = -1;
  int have_cl = 0, have_te = 0, te_chunked_last = 0, te_chunked_count = 0;
  int have_upgrade = 0, hosts = 0;
  unsigned conn = 0, flags = 0;

  for (k = 0; k < head->num_headers; k++) {
    const kp_http_header_t *h = &head->headers[k];
    const char *e;
    size_t pos = 0, elen;
    int r;
    switch (h->name_len) {
    case 14:
      if (kp__strieq(h->name, 14, "content-length")) {
        have_cl = 1;
        if ((r = kp__content_length(h, &cl)) < 0) return r;
      }
      break;
    case 17:
      /* Transfer-Encoding (RFC 9112 §6.1): codings are applied in order
       * over all the field lines; chunked must be the last and only once. */
      if (kp__strieq(h->name, 17, "transfer-encoding")) {
        have_te = 1;
        while (kp__list_next(h->value, h->value_len, &pos, &e, &elen)) {
          size_t n = 0;
          if (elen == 0) continue; /* empty list elements are ignored */
          /* transfer-coding = token *( OWS ";" OWS transfer-parameter ) */
          while (n < elen && kp__is_tchar((uint8_t)e[n])) n++;
          if (n == 0) return KP_EBADMSG;
          te_chunked_last = kp__strieq(e, n, "chunked");
          if (te_chunked_last) te_chunked_count++;
        }
      }
      break;
    case 10:
      if (kp__strieq(h->name, 10, "connection")) {
        /* connection-option tokens are case-insensitive (RFC 9110 §7.6.1) */
        while (kp__list_next(h->value, h->value_len, &pos, &e, &elen)) {
          if (kp__strieq(e, elen, "close"))
            conn |= KP__CONN_CLOSE;
          else if (kp__strieq(e, elen, "keep-alive"))
            conn |= KP__CONN_KEEP_ALIVE;
          else if (kp__strieq(e, elen, "upgrade"))
            conn |= KP__CONN_UPGRADE;
        }
      }
      break;
    case 7:
      if (kp__strieq(h->name, 7, "upgrade") && h->value_len > 0)
        have_upgrade = 1;
      break;
    case 6:
      /* Expect: 100-continue is the only expectation defined, and it is
       * case-insensitive (RFC 9110 §10.1.1). */
      if (is_request && kp__strieq(h->name, 6, "expect") &&
          kp__strieq(h->value, h->value_len, "100-continue"))
        flags |= KP_HTTP_F_EXPECT_CONTINUE;
      break;
    case 4:
      if (kp__strieq(h->name, 4, "host")) hosts++;
      break;
    default:
      break;
    }
  }

  /* Persistence (RFC 9112 §9.3): 1.1 persists unless "close"; 1.0 only
   * with "keep-alive" (the RFC 2068 convention still in use). */
  if (!(conn & KP__CONN_CLOSE) &&
      (head->minor_version == 1 || (conn & KP__CONN_KEEP_ALIVE)))
    flags |= KP_HTTP_F_KEEP_ALIVE;

  if (is_request) {
    /* Host (RFC 9112 §3.2): a 1.1 request without one, or any request with
     * several, MUST get a 400; several would also let the hub and the API
     * server route the same request differently. */
    if (hosts > 1 || (hosts == 0 && head->minor_version == 1))
      return KP_EBADMSG;
    if (have_te) {
      /* RFC 9112 §6.1: TE in an HTTP/1.0 message means faulty framing;
       * §6.3 item 3: TE with CL "ought to be handled as an error" - for a
       * request in front of another server it is the classic smuggling
       * shape, so it is refused; §6.3 item 4: chunked not last in a
       * request MUST be answered with 400. */
      if (head->minor_version == 0 || have_cl || !te_chunked_last ||
          te_chunked_count != 1)
        return KP_EBADMSG;
      flags |= KP_HTTP_F_CHUNKED;
    } else if (have_cl) {
      flags |= KP_HTTP_F_CONTENT_LENGTH;
      head->content_length = cl;
    }
    /* RFC 9110 §7.8: Upgrade in an HTTP/1.0 request MUST be ignored. */
    if ((conn & KP__CONN_UPGRADE) && have_upgrade && head->minor_version == 1)
      flags |= KP_HTTP_F_UPGRADE;
  } else {
    if (have_te) {
      /* §6.3 item 3: TE overrides CL. Such a response, a TE on HTTP/1.0
       * (§6.1) or one not ending in chunked (§6.3 item 4: read until close)
       * leaves the framing in doubt, so the connection is not reused. */
      if (head->minor_version == 1 && te_chunked_last &&
          te_chunked_count == 1)
        flags |= KP_HTTP_F_CHUNKED;
      if (have_cl || !(flags & KP_HTTP_F_CHUNKED))
        flags &= ~(unsigned)KP_HTTP_F_KEEP_ALIVE;
    } else if (have_cl) {
      flags |= KP_HTTP_F_CONTENT_LENGTH;
      head->content_length = cl;
    }
    /* Only 101 switches protocols (RFC 9110 §15.2.2). Connection: upgrade
     * plus Upgrade on any other status is an advertisement (Apache sends it
     * on 200s) and must not put the proxy into tunnel mode. */
    if (head->status == 101) flags |= KP_HTTP_F_UPGRADE;
  }
  head->flags = flags;
  return 0;
}

/* ------------------------------------------------------------------ */
/* Heads                                                               */
/* ------------------------------------------------------------------ */

static int kp__parse_head(const uint8_t *buf, size_t len, size_t max_head,
                          kp_http_head_t *head, int is_request) {
  size_t end, pos = 0, eol = 0;
  int r;

  if (head == NULL || (buf == NULL && len > 0)) return KP_EINVAL;
  if (max_head == 0) max_head = KP_HTTP_DEFAULT_MAX_HEAD;
  if (max_head > INT_MAX) max_head = INT_MAX; /* the length is returned */
  end = len < max_head ? len : max_head;

  head->method = head->target = head->reason = NULL;
  head->method_len = head->target_len = head->reason_len = 0;
  head->status = 0;
  head->minor_version = 0;
  head->num_headers = 0;
  head->content_length = -1;
  head->flags = 0;

/* An unfinished line: wait for more, unless max_head bytes are already here
 * and the head has not ended inside them (it cannot fit any more). */
#define KP__INCOMPLETE() (len >= max_head ? KP_EHEADTOOBIG : KP_EAGAIN)

  if (is_request) {
    /* RFC 9112 §2.2: a server SHOULD ignore at least one empty line before
     * the request-line (clients sometimes send CRLF after a POST body). */
    while (pos + 1 < end && buf[pos] == '\r' && buf[pos + 1] == '\n')
      pos += 2;
  }
  r = kp__find_eol(buf, pos, end, &eol);
  if (r == KP_EAGAIN) {
    /* Reject a request that cannot become valid before its line is done
     * (e.g. a TLS ClientHello on the plain port): the method must be
     * tokens up to the first SP. A valid prefix never fails here. */
    if (is_request) {
      size_t i = pos;
      while (i < end && kp__is_tchar(buf[i])) i++;
      if (i < end && (buf[i] != ' ' || i == pos) && buf[i] != '\r')
        return KP_EBADMSG;
    }
    return KP__INCOMPLETE();
  }
  if (r < 0) return r;
  r = is_request ? kp__parse_request_line(buf, pos, eol, head)
                 : kp__parse_status_line(buf, pos, eol, head);
  if (r < 0) return r;
  pos = eol + 2;

  for (;;) {
    r = kp__find_eol(buf, pos, end, &eol);
    if (r == KP_EAGAIN) return KP__INCOMPLETE();
    if (r < 0) return r;
    if (eol == pos) break; /* the empty line ends the head */
    if (head->num_headers == KP_HTTP_MAX_HEADERS) return KP_EHEADTOOBIG;
    r = kp__parse_field_line(buf, pos, eol, &head->headers[head->num_headers]);
    if (r < 0) return r;
    head->num_headers++;
    pos = eol + 2;
  }
#undef KP__INCOMPLETE
  pos = eol + 2;
  if ((r = kp__derive(head, is_request)) < 0) return r;
  return (int)pos;
}

int kp_http_parse_request(const uint8_t *buf, size_t len, size_t max_head,
                          kp_http_head_t *head) {
  return kp__parse_head(buf, len, max_head, head, 1);
}

int kp_http_parse_response(const uint8_t *buf, size_t len, size_t max_head,
                           kp_http_head_t *head) {
  return kp__parse_head(buf, len, max_head, head, 0);
}

const kp_http_header_t *kp_http_find_header(const kp_http_head_t *head,
                                            const char *name) {
  size_t k;
  if (head == NULL || name == NULL) return NULL;
  for (k = 0; k < head->num_headers; k++)
    if (kp__strieq(head->headers[k].name, head->headers[k].name_len, name))
      return &head->headers[k];
  return NULL;
}

static int kp__has_prefix_ci(const char *s, size_t len, const char *pre) {
  size_t n = strlen(pre);
  return len >= n && kp__strieq(s, n, pre);
}

int kp_http_is_identity_header(const char *name, size_t len) {
  /* Impersonate-User/-Group/-Uid/-Extra-*: kube-apiserver's impersonation.
   * X-Remote-User/-Group/-Extra-*: its --requestheader-* defaults, honoured
   * from a front proxy whose client certificate it trusts (the agent's
   * upstream connection may be such a one). X-Forwarded-User/-Groups/
   * -Email/-Preferred-Username: what oauth2-proxy-style auth proxies set. */
  return kp__has_prefix_ci(name, len, "impersonate-") ||
         kp__has_prefix_ci(name, len, "x-remote-") ||
         kp__strieq(name, len, "x-forwarded-user") ||
         kp__strieq(name, len, "x-forwarded-groups") ||
         kp__strieq(name, len, "x-forwarded-email") ||
         kp__strieq(name, len, "x-forwarded-preferred-username");
}

int kp_http_connection_names_protected(const kp_http_head_t *head,
                                       const char **name, size_t *len) {
  size_t k;
  if (head == NULL) return 0;
  for (k = 0; k < head->num_headers; k++) {
    const kp_http_header_t *h = &head->headers[k];
    const char *e;
    size_t pos = 0, elen;
    if (!kp__strieq(h->name, h->name_len, "connection")) continue;
    while (kp__list_next(h->value, h->value_len, &pos, &e, &elen)) {
      if (kp__strieq(e, elen, "content-length") ||
          kp__strieq(e, elen, "transfer-encoding") ||
          kp__strieq(e, elen, "host") ||
          kp__strieq(e, elen, "authorization") ||
          kp_http_is_identity_header(e, elen)) {
        if (name) *name = e;
        if (len) *len = elen;
        return 1;
      }
    }
  }
  return 0;
}

/* The fields a hub may add for a member (kp_http_check_hub_fields):
 * kube-apiserver's impersonation headers and its Audit-ID. Anything that
 * frames or routes the request (Content-Length, Transfer-Encoding, Host,
 * Connection) is deliberately not among them. */
static int kp__is_hub_field(const char *name, size_t len) {
  return kp__strieq(name, len, "impersonate-user") ||
         kp__strieq(name, len, "impersonate-group") ||
         kp__strieq(name, len, "impersonate-uid") ||
         (len > 18 && kp__has_prefix_ci(name, len, "impersonate-extra-")) ||
         kp__strieq(name, len, "audit-id");
}

int kp_http_check_hub_fields(const char *fields, size_t len) {
  size_t pos = 0;
  if (fields == NULL) return len == 0 ? 0 : KP_EINVAL;
  while (pos < len) {
    size_t name = pos, name_len, v, v_end;
    while (pos < len && kp__is_tchar((uint8_t)fields[pos])) pos++;
    name_len = pos - name;
    if (name_len == 0 || pos + 1 >= len || fields[pos] != ':' ||
        fields[pos + 1] != ' ' ||
        !kp__is_hub_field(fields + name, name_len))
      return KP_EINVAL;
    v = pos += 2;
    while (pos < len && fields[pos] != '\r') {
      if (!kp__is_field_char((uint8_t)fields[pos])) return KP_EINVAL;
      pos++;
    }
    v_end = pos;
    /* RFC 9110 5.5: no whitespace at either end of a value (a reader would
     * trim it, and then the value checked here is not the one it uses). */
    if (v_end > v && (kp__is_ows((uint8_t)fields[v]) ||
                      kp__is_ows((uint8_t)fields[v_end - 1])))
      return KP_EINVAL;
    if (pos + 1 >= len || fields[pos + 1] != '\n') return KP_EINVAL;
    pos += 2;
  }
  return 0;
}

/* ------------------------------------------------------------------ */
/* Bodies                                                              */
/* ------------------------------------------------------------------ */

/* Chunked decoder states (RFC 9112 §7.1):
 *   chunked-body = *chunk last-chunk trailer-section CRLF
 *   chunk        = chunk-size [ chunk-ext ] CRLF chunk-data CRLF */
enum {
  KP__CH_SIZE = 0,   /* chunk-size hex digits; line_len = digits so far */
  KP__CH_SIZE_WS,    /* BWS after the size: only ";" may follow */
  KP__CH_EXT,        /* chunk-ext up to CR, skipped */
  KP__CH_SIZE_LF,    /* the LF of the size line */
  KP__CH_DATA,       /* chunk-data; remaining = bytes left */
  KP__CH_DATA_CR,    /* CRLF after chunk-data */
  KP__CH_DATA_LF,
  KP__CH_TR_START,   /* start of a trailer line or the final CRLF */
  KP__CH_TR_NAME,    /* trailer field-name */
  KP__CH_TR_VALUE,   /* trailer field-value up to CR */
  KP__CH_TR_LF,      /* the LF of a trailer line */
  KP__CH_END_LF,     /* the LF of the final CRLF */
  KP__CH_ERROR
};

/* The size line (digits and extensions) is bounded so a peer cannot make us
 * skip unbounded extension bytes for no payload; the trailer section the
 * same way (line_len counts all its bytes). */
#define KP__CHUNK_LINE_MAX 4096
#define KP__TRAILER_MAX (64 * 1024)

void kp_http_body_init(kp_http_body_t *body, const kp_http_head_t *head,
                       int is_request, int request_method_head) {
  memset(body, 0, sizeof(*body));
  body->mode = KP_HTTP_BODY_NONE;
  if (!is_request) {
    /* RFC 9112 §6.3 item 1: no body after HEAD, 1xx, 204 or 304, whatever
     * the fields say. (A 2xx to CONNECT is a tunnel; kopilot sends none.) */
    if (request_method_head || (head->status >= 100 && head->status < 200) ||
        head->status == 204 || head->status == 304) {
      body->done = 1;
      return;
    }
  }
  if (head->flags & KP_HTTP_F_CHUNKED) {
    body->mode = KP_HTTP_BODY_CHUNKED;
    body->state = KP__CH_SIZE;
    body->no_trailers = is_request;
  } else if (head->flags & KP_HTTP_F_CONTENT_LENGTH) {
    body->mode = KP_HTTP_BODY_LENGTH;
    body->remaining = (uint64_t)head->content_length;
    body->done = body->remaining == 0;
  } else if (is_request) {
    body->done = 1; /* §6.3 item 6: a request without either has none */
  } else {
    body->mode = KP_HTTP_BODY_UNTIL_CLOSE; /* §6.3 item 8 */
  }
}

static int kp__chunked_scan(kp_http_body_t *b, const uint8_t *in, size_t len,
                            const uint8_t **data, size_t *data_len) {
  size_t i = 0;
  while (i < len) {
    uint8_t c = in[i];
    switch (b->state) {
    case KP__CH_SIZE: {
      int h = kp__hexval(c);
      if (h >= 0) {
        /* 16 hex digits fill a uint64_t; more could overflow. Leading
         * zeros count too - no sender needs 17 digits. */
        if (b->line_len == 16) goto fail;
        b->remaining = b->remaining << 4 | (uint64_t)h;
        b->line_len++;
        i++;
        break;
      }
      if (b->line_len == 0) goto fail; /* chunk-size = 1*HEXDIG */
      if (c == '\r') b->state = KP__CH_SIZE_LF;
      else if (c == ';') b->state = KP__CH_EXT;
      else if (kp__is_ows(c)) b->state = KP__CH_SIZE_WS;
      else goto fail;
      b->line_len++;
      i++;
      break;
    }
    case KP__CH_SIZE_WS:
      /* chunk-ext = *( BWS ";" BWS ext-name [ BWS "=" BWS ext-val ] ) */
      if (c == ';') b->state = KP__CH_EXT;
      else if (!kp__is_ows(c)) goto fail;
      if (++b->line_len > KP__CHUNK_LINE_MAX) goto fail;
      i++;
      break;
    case KP__CH_EXT:
      /* Extensions are skipped, not interpreted (§7.1.1: a recipient MUST
       * ignore unrecognized ones); they may not hide control bytes. */
      if (c == '\r') b->state = KP__CH_SIZE_LF;
      else if (!kp__is_field_char(c)) goto fail;
      if (++b->line_len > KP__CHUNK_LINE_MAX) goto fail;
      i++;
      break;
    case KP__CH_SIZE_LF:
      if (c != '\n') goto fail;
      i++;
      b->line_len = 0;
      if (b->remaining == 0) {
        b->state = KP__CH_TR_START; /* last-chunk */
      } else {
        b->state = KP__CH_DATA;
      }
      break;
    case KP__CH_DATA: {
      size_t n = len - i;
      if ((uint64_t)n > b->remaining) n = (size_t)b->remaining;
      b->remaining -= n;
      if (b->remaining == 0) b->state = KP__CH_DATA_CR;
      if (data) {
        /* Stop after each payload range so the caller sees it. */
        *data = in + i;
        *data_len = n;
        return (int)(i + n);
      }
      i += n;
      break;
    }
    case KP__CH_DATA_CR:
      if (c != '\r') goto fail;
      b->state = KP__CH_DATA_LF;
      i++;
      break;
    case KP__CH_DATA_LF:
      if (c != '\n') goto fail;
      b->state = KP__CH_SIZE;
      b->remaining = 0;
      b->line_len = 0;
      i++;
      break;
    case KP__CH_TR_START:
      if (++b->line_len > KP__TRAILER_MAX) goto fail;
      i++;
      if (c == '\r') b->state = KP__CH_END_LF;
      else if (b->no_trailers) goto fail;
      else if (kp__is_tchar(c)) b->state = KP__CH_TR_NAME;
      else goto fail; /* obs-fold, a bare LF or a bad name byte */
      break;
    case KP__CH_TR_NAME:
      if (++b->line_len > KP__TRAILER_MAX) goto fail;
      i++;
      if (c == ':') b->state = KP__CH_TR_VALUE;
      else if (!kp__is_tchar(c)) goto fail;
      break;
    case KP__CH_TR_VALUE:
      if (++b->line_len > KP__TRAILER_MAX) goto fail;
      i++;
      if (c == '\r') b->state = KP__CH_TR_LF;
      else if (!kp__is_field_char(c)) goto fail;
      break;
    case KP__CH_TR_LF:
      if (++b->line_len > KP__TRAILER_MAX) goto fail;
      i++;
      if (c != '\n') goto fail;
      b->state = KP__CH_TR_START;
      break;
    case KP__CH_END_LF:
      if (c != '\n') goto fail;
      i++;
      b->done = 1;
      return (int)i;
    default:
      goto fail;
    }
  }
  return (int)i;
fail:
  b->state = KP__CH_ERROR;
  return KP_EBADMSG;
}

int kp_http_body_scan(kp_http_body_t *body, const uint8_t *in, size_t len,
                      const uint8_t **data, size_t *data_len) {
  size_t n;
  if (data) *data = NULL;
  if (data_len) *data_len = 0;
  if (data && !data_len) data = NULL;
  if (body == NULL || (in == NULL && len > 0)) return KP_EINVAL;
  if (len > INT_MAX) len = INT_MAX; /* the count is returned as an int */
  if (body->done) return 0;
  switch (body->mode) {
  case KP_HTTP_BODY_LENGTH:
    n = len;
    if ((uint64_t)n > body->remaining) n = (size_t)body->remaining;
    body->remaining -= n;
    body->done = body->remaining == 0;
    break;
  case KP_HTTP_BODY_UNTIL_CLOSE:
    n = len; /* the caller marks the end when the peer closes */
    break;
  case KP_HTTP_BODY_CHUNKED:
    return kp__chunked_scan(body, in, len, data, data_len);
  default:
    body->done = 1;
    return 0;
  }
  if (data && n > 0) {
    *data = in;
    *data_len = n;
  }
  return (int)n;
}
