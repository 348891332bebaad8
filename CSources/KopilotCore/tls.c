/* tls.c - TLS with OpenSSL 3.0, no I/O.
 *
 * The engine sits between a socket its owner reads and writes and the
 * plaintext layers above. OpenSSL talks to a custom BIO instead of a pair
 * of memory BIOs:
 *  - its writes append ciphertext straight into pooled chunks, which the
 *    owner pops as owned slices and hands to uv_write. A memory BIO would
 *    make the owner copy the bytes out again; this way the BIO's copy (out
 *    of OpenSSL's write buffer) is the only one.
 *  - its reads pull from the owner's read chunks, held by reference, so the
 *    only copy on input is the one into OpenSSL's record buffer, where
 *    records are decrypted in place.
 * The BIO never blocks on write, so SSL_ERROR_WANT_WRITE cannot happen and
 * SSL_write_ex always takes everything it is given.
 *
 * Memory per idle connection matters (10,000 idle agents on one hub):
 * SSL_MODE_RELEASE_BUFFERS makes OpenSSL free its record buffers whenever
 * they are empty, and the engine gives back its input references as soon as
 * OpenSSL has pulled the bytes and its output chunks when they are popped.
 * An idle engine holds its SSL object and nothing else.
 *
 * OpenSSL's error queue is per thread; every entry point clears it before
 * the call and drains it after a failure, so one connection's errors never
 * show up as another's on the same loop thread.
 */
#define OPENSSL_API_COMPAT 30000
#define OPENSSL_NO_DEPRECATED 1

#include "internal.h"

#include <arpa/inet.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

/* TLS 1.2 suites: forward secret and AEAD only (RFC 7525 4.2), AES-GCM
 * first because every server CPU we run on has AES instructions; with
 * SSL_OP_PRIORITIZE_CHACHA a client that lists ChaCha20 first (no AES
 * hardware) still gets it. */
#define KP__TLS12_CIPHERS                                            \
  "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"       \
  "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"       \
  "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
#define KP__TLS13_SUITES                                             \
  "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"                   \
  "TLS_CHACHA20_POLY1305_SHA256"

/* Bytes per TLS record payload (RFC 8446 5.1): writev stages small pieces
 * up to this size so they share one record. */
#define KP__TLS_RECORD_MAX 16384
#define KP__TLS_ERR_MAX 200

struct kp_tls_ctx {
  atomic_uint refs;
  int is_server;
  int verify;      /* client: verify the server's certificate and name */
  SSL_CTX *ssl_ctx;
  BIO_METHOD *bio_meth;
  uint8_t *alpn;   /* server: our list in wire format (RFC 7301 3.1) */
  size_t alpn_len;
  /* Client: the newest session ticket and the server name it is for, to
   * resume the next connection. Engines of one context may live on
   * different threads, hence the lock. */
  pthread_mutex_t lock;
  SSL_SESSION *session;
  char *session_name;
};

/* A FIFO of slices, a ring that grows by doubling. Its array is freed when
 * it empties, so an idle engine keeps no allocation for it. */
typedef struct kp__tls_q {
  kp_slice_t *v;
  size_t head, n, cap;
} kp__tls_q_t;

struct kp_tls {
  kp_tls_ctx_t *ctx; /* one reference */
  SSL *ssl;
  kp__tls_q_t in;  /* fed ciphertext OpenSSL has not pulled yet */
  kp__tls_q_t out; /* ciphertext for the owner; the last slice grows */
  size_t in_bytes;
  size_t out_bytes;
  char *name;      /* client: the server name asked for (owned) */
  char *err;       /* last failure's reason, allocated on first failure */
  int fatal;       /* sticky error once the connection is broken */
  int shut;        /* kp_tls_shutdown was called */
  int oom;         /* the BIO could not get a chunk */
  int in_own_tail; /* the last input slice is our copy: it may grow */
};

/* ------------------------------------------------------------------ */
/* Slice queues                                                        */
/* ------------------------------------------------------------------ */

static kp_slice_t *q_at(kp__tls_q_t *q, size_t i) {
  return &q->v[(q->head + i) % q->cap];
}

static int q_push(kp__tls_q_t *q, kp_slice_t s) {
  if (q->n == q->cap) {
    size_t cap = q->cap ? q->cap * 2 : 4, i;
    kp_slice_t *v = malloc(cap * sizeof(*v));
    if (v == NULL) return KP_ENOMEM;
    for (i = 0; i < q->n; i++) v[i] = *q_at(q, i);
    free(q->v);
    q->v = v;
    q->cap = cap;
    q->head = 0;
  }
  q->v[(q->head + q->n) % q->cap] = s;
  q->n++;
  return 0;
}

/* Removes the front slice without touching its reference. */
static void q_shift(kp__tls_q_t *q) {
  q->head = (q->head + 1) % q->cap;
  if (--q->n == 0) {
    free(q->v);
    q->v = NULL;
    q->cap = q->head = 0;
  }
}

static void q_clear(kp__tls_q_t *q) {
  while (q->n > 0) {
    kp_chunk_unref(q_at(q, 0)->chunk);
    q_shift(q);
  }
}

/* ------------------------------------------------------------------ */
/* The BIO                                                             */
/* ------------------------------------------------------------------ */

static int bio_read(BIO *b, char *buf, size_t size, size_t *done) {
  kp_tls_t *t = BIO_get_data(b);
  size_t got = 0;
  BIO_clear_retry_flags(b);
  while (got < size && t->in.n > 0) {
    kp_slice_t *s = q_at(&t->in, 0);
    size_t k = KP__MIN(size - got, s->len);
    memcpy(buf + got, s->base, k);
    got += k;
    s->base += k;
    s->len -= k;
    if (s->len == 0) {
      kp_chunk_unref(s->chunk);
      q_shift(&t->in);
    }
  }
  t->in_bytes -= got;
  *done = got;
  if (got == 0) {
    /* Not EOF: the owner has not fed more yet. The socket's EOF is the
     * owner's business (see kp_tls_read). */
    BIO_set_retry_read(b);
    return 0;
  }
  return 1;
}

static int bio_write(BIO *b, const char *data, size_t size, size_t *done) {
  kp_tls_t *t = BIO_get_data(b);
  size_t left = size;
  BIO_clear_retry_flags(b);
  *done = 0;
  while (left > 0) {
    kp_slice_t *tail = t->out.n > 0 ? q_at(&t->out, t->out.n - 1) : NULL;
    size_t room = 0, k;
    if (tail != NULL)
      room = kp_chunk_capacity(tail->chunk) -
             (size_t)(tail->base + tail->len - kp_chunk_data(tail->chunk));
    if (room == 0) {
      kp_chunk_t *c = kp_chunk_new(0);
      kp_slice_t s;
      if (c == NULL) goto fail_oom;
      s.chunk = c;
      s.base = kp_chunk_data(c);
      s.len = 0;
      if (q_push(&t->out, s) != 0) {
        kp_chunk_unref(c);
        goto fail_oom;
      }
      continue;
    }
    k = KP__MIN(room, left);
    memcpy(tail->base + tail->len, data, k);
    tail->len += k;
    t->out_bytes += k;
    data += k;
    left -= k;
  }
  *done = size;
  return 1;

fail_oom:
  /* No retry flag: OpenSSL fails the operation and the connection is lost,
   * which is the smallest unit to close. */
  t->oom = 1;
  return 0;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr) {
  kp_tls_t *t = BIO_get_data(b);
  (void)num;
  (void)ptr;
  switch (cmd) {
  case BIO_CTRL_FLUSH:
    /* OpenSSL flushes after each handshake flight; the bytes are already
     * in the output queue, so there is nothing more to do. */
    return 1;
  case BIO_CTRL_PENDING:
    return t != NULL ? (long)KP__MIN(t->in_bytes, (size_t)LONG_MAX) : 0;
  case BIO_CTRL_WPENDING:
    return 0;
  default:
    return 0;
  }
}

/* ------------------------------------------------------------------ */
/* Errors                                                              */
/* ------------------------------------------------------------------ */

static void set_err(kp_tls_t *t, const char *fmt, const char *a,
                    const char *b) {
  if (t->err == NULL && (t->err = malloc(KP__TLS_ERR_MAX)) == NULL) return;
  snprintf(t->err, KP__TLS_ERR_MAX, fmt, a, b);
}

/* Alerts (RFC 8446 6.2) by which a peer refuses our certificate. OpenSSL
 * reports a received alert as reason SSL_AD_REASON_OFFSET + alert. */
static int is_cert_alert(int reason) {
  switch (reason - SSL_AD_REASON_OFFSET) {
  case SSL_AD_BAD_CERTIFICATE:
  case SSL_AD_UNSUPPORTED_CERTIFICATE:
  case SSL_AD_CERTIFICATE_REVOKED:
  case SSL_AD_CERTIFICATE_EXPIRED:
  case SSL_AD_CERTIFICATE_UNKNOWN:
  case SSL_AD_UNKNOWN_CA:
  case SSL_AD_CERTIFICATE_REQUIRED:
    return 1;
  default:
    return 0;
  }
}

/* Maps a failed SSL call to our codes. Must run right after the call, with
 * the thread's error queue as the call left it; leaves the queue empty. */
static int fail(kp_tls_t *t, int ret) {
  int e = SSL_get_error(t->ssl, ret), rc;
  unsigned long code;
  char buf[160];

  if (e == SSL_ERROR_WANT_READ && !t->oom) {
    ERR_clear_error();
    return KP_EAGAIN;
  }
  if (e == SSL_ERROR_ZERO_RETURN) {
    ERR_clear_error();
    return KP_ECLOSED;
  }
  code = ERR_peek_error();
  if (t->oom) {
    rc = KP_ENOMEM;
    set_err(t, "%s%s", "out of memory for TLS output", "");
  } else if (code != 0 && ERR_GET_LIB(code) == ERR_LIB_SSL &&
             ERR_GET_REASON(code) == SSL_R_CERTIFICATE_VERIFY_FAILED) {
    /* Our check of the peer's certificate failed: the verify result is the
     * readable reason ("hostname mismatch", "unable to get local issuer
     * certificate"), more useful than OpenSSL's generic error line. */
    rc = KP_ECERT;
    set_err(t, "certificate verify failed: %s%s",
            X509_verify_cert_error_string(SSL_get_verify_result(t->ssl)),
            "");
  } else if (code != 0 && ERR_GET_LIB(code) == ERR_LIB_SSL &&
             (ERR_GET_REASON(code) ==
                  SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE ||
              is_cert_alert(ERR_GET_REASON(code)))) {
    const char *why = ERR_reason_error_string(code);
    rc = KP_ECERT;
    set_err(t, "%s: %s",
            ERR_GET_REASON(code) == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE
                ? "client certificate required"
                : "peer refused our certificate",
            why != NULL ? why : "alert");
  } else if (code != 0) {
    rc = KP_ETLS;
    ERR_error_string_n(code, buf, sizeof(buf));
    set_err(t, "%s%s", buf, "");
  } else {
    rc = KP_ETLS;
    set_err(t, "TLS failure (SSL_get_error %s)%s",
            e == SSL_ERROR_SYSCALL ? "SYSCALL" : "other", "");
  }
  ERR_clear_error();
  t->fatal = rc;
  return rc;
}

/* ------------------------------------------------------------------ */
/* Contexts                                                            */
/* ------------------------------------------------------------------ */

static void ctx_err(char *err, size_t errlen, const char *what) {
  unsigned long code = ERR_peek_last_error();
  char buf[160] = "";
  if (err == NULL || errlen == 0) return;
  if (code != 0) ERR_error_string_n(code, buf, sizeof(buf));
  snprintf(err, errlen, "%s%s%s", what, code != 0 ? ": " : "", buf);
}

/* Never prompt on the terminal for a pass phrase: an encrypted key is a
 * configuration error here. */
static int no_password(char *buf, int size, int rwflag, void *u) {
  (void)buf;
  (void)size;
  (void)rwflag;
  (void)u;
  return -1;
}

/* A BIO over a file or over PEM text (len 0: NUL-terminated); NULL when
 * neither is given or on failure. */
static BIO *pem_source(const char *file, const char *pem, size_t len) {
  if (file != NULL) return BIO_new_file(file, "r");
  if (pem != NULL)
    return BIO_new_mem_buf(pem, len == 0 ? -1 : (int)KP__MIN(len, INT_MAX));
  return NULL;
}

/* The PEM reader ends every list with a "no start line" error; that one
 * means "no more certificates", anything else is real. */
static int pem_list_ended_cleanly(void) {
  unsigned long code = ERR_peek_last_error();
  if (code == 0 ||
      (ERR_GET_LIB(code) == ERR_LIB_PEM &&
       ERR_GET_REASON(code) == PEM_R_NO_START_LINE)) {
    ERR_clear_error();
    return 1;
  }
  return 0;
}

static int load_cert_chain(SSL_CTX *sc, BIO *in) {
  X509 *x = PEM_read_bio_X509_AUX(in, NULL, no_password, NULL);
  int ok;
  if (x == NULL) return 0;
  ok = SSL_CTX_use_certificate(sc, x);
  X509_free(x);
  if (!ok || !SSL_CTX_clear_chain_certs(sc)) return 0;
  while ((x = PEM_read_bio_X509(in, NULL, no_password, NULL)) != NULL) {
    if (!SSL_CTX_add0_chain_cert(sc, x)) {
      X509_free(x);
      return 0;
    }
  }
  return pem_list_ended_cleanly();
}

static int load_key(SSL_CTX *sc, BIO *in) {
  EVP_PKEY *k = PEM_read_bio_PrivateKey(in, NULL, no_password, NULL);
  int ok;
  if (k == NULL) return 0;
  ok = SSL_CTX_use_PrivateKey(sc, k);
  EVP_PKEY_free(k);
  return ok && SSL_CTX_check_private_key(sc);
}

/* Adds every certificate in the PEM to the trust store; a server also names
 * them in its CertificateRequest so clients know which certificate to send. */
static int load_ca(SSL_CTX *sc, BIO *in, int is_server) {
  X509_STORE *store = SSL_CTX_get_cert_store(sc);
  X509 *x;
  int n = 0;
  while ((x = PEM_read_bio_X509(in, NULL, no_password, NULL)) != NULL) {
    int ok = X509_STORE_add_cert(store, x) &&
             (!is_server || SSL_CTX_add_client_CA(sc, x));
    X509_free(x);
    if (!ok) return 0;
    n++;
  }
  return n > 0 && pem_list_ended_cleanly();
}

/* Server side of ALPN (RFC 7301 3.2): the first protocol in OUR list that
 * the client also offers, so the server's preference wins. Written out
 * rather than using SSL_select_next_proto, whose no-overlap fallback was
 * made for NPN (and whose empty-list handling was CVE-2024-5535). */
static int alpn_select(SSL *ssl, const unsigned char **out,
                       unsigned char *outlen, const unsigned char *in,
                       unsigned int inlen, void *arg) {
  kp_tls_ctx_t *c = arg;
  size_t i, j;
  (void)ssl;
  for (i = 0; i < c->alpn_len; i += 1 + (size_t)c->alpn[i]) {
    const uint8_t *name = c->alpn + i + 1;
    size_t nlen = c->alpn[i];
    for (j = 0; j < inlen; j += 1 + (size_t)in[j]) {
      size_t l = in[j];
      if (j + 1 + l > inlen) break; /* OpenSSL checked it; be safe anyway */
      if (l == nlen && memcmp(in + j + 1, name, l) == 0) {
        *out = in + j + 1;
        *outlen = (unsigned char)l;
        return SSL_TLSEXT_ERR_OK;
      }
    }
  }
  return SSL_TLSEXT_ERR_ALERT_FATAL; /* no_application_protocol */
}

static int alpn_wire(kp_tls_ctx_t *c, const kp_tls_ctx_options_t *o) {
  size_t i, len = 0;
  for (i = 0; i < o->alpn_count; i++) {
    size_t l = o->alpn[i] != NULL ? strlen(o->alpn[i]) : 0;
    if (l == 0 || l > 255) return KP_EINVAL;
    len += 1 + l;
  }
  if (len == 0) return 0;
  if ((c->alpn = malloc(len)) == NULL) return KP_ENOMEM;
  c->alpn_len = len;
  for (len = 0, i = 0; i < o->alpn_count; i++) {
    size_t l = strlen(o->alpn[i]);
    c->alpn[len] = (uint8_t)l;
    memcpy(c->alpn + len + 1, o->alpn[i], l);
    len += 1 + l;
  }
  return 0;
}

/* Client: OpenSSL hands us each new session (a TLS 1.3 NewSessionTicket,
 * or a TLS 1.2 session once the handshake ends); only connections that
 * passed verification get that far. Keep the newest one for the next
 * connection to the same name; returning 1 keeps OpenSSL's reference. */
static int client_new_session(SSL *ssl, SSL_SESSION *sess) {
  kp_tls_t *t = SSL_get_app_data(ssl);
  kp_tls_ctx_t *c = t->ctx;
  char *name = strdup(t->name != NULL ? t->name : "");
  if (name == NULL) return 0;
  pthread_mutex_lock(&c->lock);
  SSL_SESSION_free(c->session);
  free(c->session_name);
  c->session = sess;
  c->session_name = name;
  pthread_mutex_unlock(&c->lock);
  return 1;
}

/* Offers the kept session when it was made for the same name: resumption
 * skips the certificate, so a session is proof only for the name that was
 * verified when it was made. A TLS 1.3 ticket is used once (RFC 8446 C.4,
 * tickets are linkable); a TLS 1.2 session may be offered again. */
static void client_offer_session(kp_tls_t *t) {
  kp_tls_ctx_t *c = t->ctx;
  pthread_mutex_lock(&c->lock);
  if (c->session != NULL &&
      strcmp(c->session_name, t->name != NULL ? t->name : "") == 0 &&
      SSL_set_session(t->ssl, c->session) &&
      SSL_SESSION_get_protocol_version(c->session) >= TLS1_3_VERSION) {
    SSL_SESSION_free(c->session);
    free(c->session_name);
    c->session = NULL;
    c->session_name = NULL;
  }
  pthread_mutex_unlock(&c->lock);
  ERR_clear_error();
}

static void ctx_destroy(kp_tls_ctx_t *c) {
  SSL_SESSION_free(c->session);
  free(c->session_name);
  pthread_mutex_destroy(&c->lock);
  SSL_CTX_free(c->ssl_ctx);
  BIO_meth_free(c->bio_meth);
  free(c->alpn);
  free(c);
}

int kp_tls_ctx_new(kp_tls_ctx_t **out, const kp_tls_ctx_options_t *o,
                   char *err, size_t errlen) {
  kp_tls_ctx_t *c;
  SSL_CTX *sc;
  BIO *in = NULL;
  int rc = KP_ETLS;
  const char *why = NULL;

  *out = NULL;
  if (err != NULL && errlen > 0) err[0] = 0;
  if ((o->cert_file && o->cert_pem) || (o->key_file && o->key_pem) ||
      (o->ca_file && o->ca_pem))
    why = "give a file or PEM text, not both";
  else if (o->is_server && !(o->cert_file || o->cert_pem))
    why = "a server needs a certificate";
  else if (!(o->cert_file || o->cert_pem) != !(o->key_file || o->key_pem))
    why = "a certificate needs its key and a key its certificate";
  else if (o->is_server && o->require_client_cert && !(o->ca_file || o->ca_pem))
    why = "require_client_cert needs a CA to verify clients against";
  else if (o->is_server && o->insecure_skip_verify)
    why = "insecure_skip_verify is for clients";
  else if (o->max_version != 0 && o->max_version != KP_TLS_VERSION_1_2 &&
           o->max_version != KP_TLS_VERSION_1_3)
    why = "max_version must be 0, TLS 1.2 or TLS 1.3";
  if (why != NULL) {
    if (err != NULL && errlen > 0) snprintf(err, errlen, "%s", why);
    return KP_EINVAL;
  }

  if ((c = calloc(1, sizeof(*c))) == NULL) return KP_ENOMEM;
  atomic_init(&c->refs, 1);
  pthread_mutex_init(&c->lock, NULL);
  c->is_server = o->is_server != 0;
  c->verify = !c->is_server && !o->insecure_skip_verify;
  if ((rc = alpn_wire(c, o)) != 0) {
    ctx_err(err, errlen, "bad ALPN protocol name");
    goto fail;
  }
  rc = KP_ETLS;
  ERR_clear_error();

  /* The BIO method belongs to the context rather than to a process-wide
   * singleton, so the core has no global state of its own. Its type is a
   * plain source/sink: BIO_get_new_index() would hand out one of only 127
   * process-wide indices per context, which reloads would use up. */
  c->bio_meth = BIO_meth_new(BIO_TYPE_SOURCE_SINK, "kopilot-chunks");
  if (c->bio_meth == NULL || !BIO_meth_set_read_ex(c->bio_meth, bio_read) ||
      !BIO_meth_set_write_ex(c->bio_meth, bio_write) ||
      !BIO_meth_set_ctrl(c->bio_meth, bio_ctrl)) {
    ctx_err(err, errlen, "BIO method");
    goto fail;
  }

  c->ssl_ctx = sc = SSL_CTX_new_ex(
      NULL, NULL, c->is_server ? TLS_server_method() : TLS_client_method());
  if (sc == NULL) {
    ctx_err(err, errlen, "SSL_CTX_new");
    goto fail;
  }
  if (!SSL_CTX_set_min_proto_version(sc, TLS1_2_VERSION) ||
      !SSL_CTX_set_max_proto_version(sc, o->max_version) ||
      !SSL_CTX_set_cipher_list(sc, KP__TLS12_CIPHERS) ||
      !SSL_CTX_set_ciphersuites(sc, KP__TLS13_SUITES)) {
    ctx_err(err, errlen, "protocol settings");
    goto fail;
  }
  /* RELEASE_BUFFERS: no record buffers while idle (see the top). No
   * renegotiation: TLS 1.2 renegotiation is a DoS lever and we never need
   * it (TLS 1.3 has none). */
  SSL_CTX_set_mode(sc, SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_options(sc, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_default_passwd_cb(sc, no_password);

  if (o->cert_file || o->cert_pem) {
    in = pem_source(o->cert_file, o->cert_pem, o->cert_pem_len);
    if (in == NULL || !load_cert_chain(sc, in)) {
      ctx_err(err, errlen, "certificate");
      goto fail;
    }
    BIO_free(in);
    in = pem_source(o->key_file, o->key_pem, o->key_pem_len);
    if (in == NULL || !load_key(sc, in)) {
      ctx_err(err, errlen, "private key");
      goto fail;
    }
    BIO_free(in);
    in = NULL;
  }

  if (o->ca_file || o->ca_pem) {
    in = pem_source(o->ca_file, o->ca_pem, o->ca_pem_len);
    if (in == NULL || !load_ca(sc, in, c->is_server)) {
      ctx_err(err, errlen, "CA certificates");
      goto fail;
    }
    BIO_free(in);
    in = NULL;
  } else if (c->verify && !SSL_CTX_set_default_verify_paths(sc)) {
    ctx_err(err, errlen, "system CA store");
    goto fail;
  }

  if (c->is_server) {
    /* Prefer our cipher order (AES-GCM) but let clients without AES
     * hardware keep ChaCha20. */
    SSL_CTX_set_options(sc, SSL_OP_CIPHER_SERVER_PREFERENCE |
                                SSL_OP_PRIORITIZE_CHACHA);
    /* Resumption: stateless tickets (on by default; the keys live in this
     * SSL_CTX, so a context swapped in on reload starts new ones). The
     * session id context must be set or OpenSSL refuses to resume sessions
     * that carry a verified client certificate. The internal cache keeps
     * only TLS 1.2 sessions of clients without ticket support; cap it so a
     * reconnect storm cannot grow it without bound. */
    SSL_CTX_set_session_id_context(sc, (const unsigned char *)"kopilot", 7);
    SSL_CTX_set_session_cache_mode(sc, SSL_SESS_CACHE_SERVER);
    SSL_CTX_sess_set_cache_size(sc, 4096);
    /* Our clients keep one ticket (the newest), so one per handshake is
     * enough; the default of two doubles the work for nothing. */
    SSL_CTX_set_num_tickets(sc, 1);
    if (o->require_client_cert)
      SSL_CTX_set_verify(sc,
                         SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT |
                             SSL_VERIFY_CLIENT_ONCE,
                         NULL);
    if (c->alpn != NULL) SSL_CTX_set_alpn_select_cb(sc, alpn_select, c);
  } else {
    SSL_CTX_set_verify(sc, c->verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE,
                       NULL);
    /* Sessions reach client_new_session and live in this context, not in
     * OpenSSL's client cache (which it never consults on its own). */
    SSL_CTX_set_session_cache_mode(
        sc, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(sc, client_new_session);
    /* Note the inverted return: 0 is success. */
    if (c->alpn != NULL &&
        SSL_CTX_set_alpn_protos(sc, c->alpn, (unsigned)c->alpn_len) != 0) {
      ctx_err(err, errlen, "ALPN");
      goto fail;
    }
  }
  ERR_clear_error();
  *out = c;
  return 0;

fail:
  BIO_free(in);
  ERR_clear_error();
  ctx_destroy(c);
  return rc;
}

void kp_tls_ctx_ref(kp_tls_ctx_t *c) {
  atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

void kp_tls_ctx_free(kp_tls_ctx_t *c) {
  if (c == NULL) return;
  if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1)
    ctx_destroy(c);
}

int kp__tls_ctx_force_versions(kp_tls_ctx_t *c, int min_version,
                               int max_version) {
  SSL_CTX_set_security_level(c->ssl_ctx, 0);
  if (!SSL_CTX_set_min_proto_version(c->ssl_ctx, min_version) ||
      !SSL_CTX_set_max_proto_version(c->ssl_ctx, max_version) ||
      !SSL_CTX_set_cipher_list(c->ssl_ctx, "DEFAULT:@SECLEVEL=0")) {
    ERR_clear_error();
    return KP_EINVAL;
  }
  return 0;
}

/* ------------------------------------------------------------------ */
/* Engines                                                             */
/* ------------------------------------------------------------------ */

static int is_ip_literal(const char *s) {
  unsigned char buf[16];
  return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

int kp_tls_new(kp_tls_t **out, kp_tls_ctx_t *ctx, const char *server_name) {
  kp_tls_t *t;
  BIO *bio;
  int rc = KP_ENOMEM;

  *out = NULL;
  if (ctx->is_server ? server_name != NULL
                     : (ctx->verify && (server_name == NULL ||
                                        server_name[0] == 0)))
    return KP_EINVAL;
  if ((t = calloc(1, sizeof(*t))) == NULL) return KP_ENOMEM;
  ERR_clear_error();
  if ((t->ssl = SSL_new(ctx->ssl_ctx)) == NULL) goto fail;
  if ((bio = BIO_new(ctx->bio_meth)) == NULL) goto fail;
  BIO_set_data(bio, t);
  BIO_set_init(bio, 1);
  SSL_set_bio(t->ssl, bio, bio); /* the SSL owns the BIO now */
  SSL_set_app_data(t->ssl, t);
  t->ctx = ctx; /* the reference is taken on success below */

  if (ctx->is_server) {
    SSL_set_accept_state(t->ssl);
  } else {
    SSL_set_connect_state(t->ssl);
    if (server_name != NULL) {
      int ip = is_ip_literal(server_name);
      X509_VERIFY_PARAM *p = SSL_get0_param(t->ssl);
      rc = KP_EINVAL;
      if ((t->name = strdup(server_name)) == NULL) {
        rc = KP_ENOMEM;
        goto fail;
      }
      /* RFC 6066 3: "Literal IPv4 and IPv6 addresses are not permitted" in
       * SNI. */
      if (!ip && !SSL_set_tlsext_host_name(t->ssl, server_name)) goto fail;
      if (ctx->verify) {
        /* An IP literal must match an IP SAN, never a DNS SAN that happens
         * to spell it (RFC 6125 leaves IPs to iPAddress entries). */
        X509_VERIFY_PARAM_set_hostflags(
            p, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if (ip ? !X509_VERIFY_PARAM_set1_ip_asc(p, server_name)
               : !X509_VERIFY_PARAM_set1_host(p, server_name, 0))
          goto fail;
      }
    }
  }
  if (!ctx->is_server) client_offer_session(t);
  kp_tls_ctx_ref(ctx);
  *out = t;
  return 0;

fail:
  ERR_clear_error();
  SSL_free(t->ssl);
  free(t->name);
  free(t);
  return rc;
}

void kp_tls_free(kp_tls_t *t) {
  if (t == NULL) return;
  SSL_free(t->ssl); /* frees the BIO, which owns nothing */
  q_clear(&t->in);
  q_clear(&t->out);
  free(t->name);
  free(t->err);
  kp_tls_ctx_free(t->ctx);
  free(t);
}

int kp_tls_feed(kp_tls_t *t, const uint8_t *data, size_t len,
                kp_chunk_t *chunk) {
  kp_slice_t s;
  if (len == 0) return 0;
  if (chunk != NULL) {
    /* Zero copy: OpenSSL reads the bytes from the owner's chunk later. */
    s.chunk = chunk;
    s.base = (uint8_t *)(uintptr_t)data;
    s.len = len;
    if (q_push(&t->in, s) != 0) return KP_ENOMEM;
    kp_chunk_ref(chunk);
    t->in_bytes += len;
    t->in_own_tail = 0;
    return 0;
  }
  /* Copies go on the end of our own last copy while it has room, so an
   * owner that feeds small pieces without processing in between does not
   * pin a whole chunk per piece. Bytes already handed to OpenSSL are never
   * written over: we only append past the slice's end. */
  if (t->in_own_tail && t->in.n > 0) {
    kp_slice_t *tail = q_at(&t->in, t->in.n - 1);
    size_t used = (size_t)(tail->base + tail->len - kp_chunk_data(tail->chunk));
    size_t k = KP__MIN(len, kp_chunk_capacity(tail->chunk) - used);
    memcpy(tail->base + tail->len, data, k);
    tail->len += k;
    t->in_bytes += k;
    data += k;
    len -= k;
  }
  while (len > 0) {
    size_t k;
    if ((s.chunk = kp_chunk_new(0)) == NULL) return KP_ENOMEM;
    k = KP__MIN(len, kp_chunk_capacity(s.chunk));
    s.base = kp_chunk_data(s.chunk);
    s.len = k;
    memcpy(s.base, data, k);
    if (q_push(&t->in, s) != 0) {
      kp_chunk_unref(s.chunk);
      return KP_ENOMEM;
    }
    t->in_bytes += k;
    t->in_own_tail = 1;
    data += k;
    len -= k;
  }
  return 0;
}

/* Asking for a record allocates OpenSSL's read buffer before the BIO says
 * "nothing yet", and RELEASE_BUFFERS frees it only after a record has been
 * consumed, so a connection that goes idle right after a read would keep
 * ~17 KiB (measured: an idle TLS 1.3 client went from 33 to 17 KiB). Give
 * it back whenever we return KP_EAGAIN; OpenSSL refuses, harmlessly, while
 * the buffer holds part of a record. */
static void release_idle_buffers(kp_tls_t *t) {
  SSL_free_buffers(t->ssl);
  ERR_clear_error();
}

int kp_tls_handshake(kp_tls_t *t) {
  int r;
  if (t->fatal) return t->fatal;
  if (SSL_is_init_finished(t->ssl)) return 0;
  ERR_clear_error();
  r = SSL_do_handshake(t->ssl);
  r = r == 1 ? 0 : fail(t, r);
  if (r == 0 || r == KP_EAGAIN) release_idle_buffers(t);
  return r;
}

int kp_tls_read(kp_tls_t *t, uint8_t *out, size_t cap) {
  size_t n = 0;
  int rc;
  if (t->fatal) return t->fatal;
  if (cap == 0) return KP_EINVAL;
  ERR_clear_error();
  if (SSL_read_ex(t->ssl, out, KP__MIN(cap, (size_t)INT_MAX), &n) == 1)
    return (int)n;
  rc = fail(t, 0);
  if (rc == KP_EAGAIN) release_idle_buffers(t);
  return rc;
}

static int64_t write_all(kp_tls_t *t, const uint8_t *data, size_t len) {
  size_t n = 0;
  ERR_clear_error();
  /* Without SSL_MODE_ENABLE_PARTIAL_WRITE and with a BIO that never
   * blocks, success means every byte went into records. */
  if (SSL_write_ex(t->ssl, data, len, &n) == 1) return (int64_t)n;
  return fail(t, 0);
}

static int write_check(kp_tls_t *t) {
  if (t->fatal) return t->fatal;
  if (t->shut) return KP_ECLOSED;
  /* Writing during the handshake would drive it from inside SSL_write and
   * leave a half-taken buffer to retry; refuse instead. */
  if (!SSL_is_init_finished(t->ssl)) return KP_EAGAIN;
  return 0;
}

int64_t kp_tls_write(kp_tls_t *t, const uint8_t *data, size_t len) {
  int rc = write_check(t);
  if (rc != 0) return rc;
  if (len == 0) return 0;
  return write_all(t, data, len);
}

int64_t kp_tls_writev(kp_tls_t *t, const uint8_t *const *bufs,
                      const size_t *lens, size_t n) {
  /* Pieces are staged until a record is full; a piece of a record or more
   * with nothing staged goes straight through. The staging copy costs far
   * less than the 22+ bytes and AEAD pass of an extra record. */
  uint8_t stage[KP__TLS_RECORD_MAX];
  size_t staged = 0, i, total = 0;
  int64_t r;
  int rc = write_check(t);
  if (rc != 0) return rc;
  for (i = 0; i < n; i++) {
    const uint8_t *p = bufs[i];
    size_t len = lens[i];
    total += len;
    if (staged == 0 && len >= sizeof(stage)) {
      if ((r = write_all(t, p, len)) < 0) return r;
      continue;
    }
    while (len > 0) {
      size_t k = KP__MIN(len, sizeof(stage) - staged);
      memcpy(stage + staged, p, k);
      staged += k;
      p += k;
      len -= k;
      if (staged == sizeof(stage)) {
        if ((r = write_all(t, stage, staged)) < 0) return r;
        staged = 0;
      }
    }
  }
  if (staged > 0 && (r = write_all(t, stage, staged)) < 0) return r;
  return (int64_t)total;
}

int kp_tls_shutdown(kp_tls_t *t) {
  int r;
  if (t->shut) return 0;
  t->shut = 1;
  if (t->fatal) return t->fatal;
  /* close_notify before the handshake ends would be an error in OpenSSL;
   * there is nothing to protect yet, so the owner just closes. */
  if (!SSL_is_init_finished(t->ssl)) return 0;
  ERR_clear_error();
  r = SSL_shutdown(t->ssl); /* 0: sent, the peer's is not in yet */
  if (r >= 0) return 0;
  r = fail(t, r);
  return r == KP_EAGAIN ? 0 : r;
}

int kp_tls_out_pop(kp_tls_t *t, kp_slice_t *out) {
  if (t->out.n == 0) return 0;
  /* The engine's reference goes to the caller. When this is the slice
   * still being filled, the next write starts a new chunk, which is what
   * lets an idle engine hold none. */
  *out = *q_at(&t->out, 0);
  q_shift(&t->out);
  t->out_bytes -= out->len;
  return 1;
}

size_t kp_tls_out_pending(const kp_tls_t *t) { return t->out_bytes; }

size_t kp_tls_chunks_held(const kp_tls_t *t) { return t->in.n + t->out.n; }

int kp_tls_is_established(const kp_tls_t *t) {
  return SSL_is_init_finished(t->ssl) ? 1 : 0;
}

const uint8_t *kp_tls_alpn(const kp_tls_t *t, size_t *len) {
  const unsigned char *p = NULL;
  unsigned int l = 0;
  SSL_get0_alpn_selected(t->ssl, &p, &l);
  *len = p != NULL ? l : 0;
  return l > 0 ? p : NULL;
}

const char *kp_tls_server_name(const kp_tls_t *t) {
  if (!t->ctx->is_server) return t->name;
  return SSL_get_servername(t->ssl, TLSEXT_NAMETYPE_host_name);
}

int kp_tls_resumed(const kp_tls_t *t) {
  return SSL_is_init_finished(t->ssl) && SSL_session_reused(t->ssl) ? 1 : 0;
}

int kp_tls_version(const kp_tls_t *t) {
  return SSL_is_init_finished(t->ssl) ? SSL_version(t->ssl) : 0;
}

const char *kp_tls_last_error(const kp_tls_t *t) {
  return t->err != NULL ? t->err : "";
}
