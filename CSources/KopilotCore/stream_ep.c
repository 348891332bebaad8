/* stream_ep.c - a mux stream seen as a relay endpoint. */
#include "relay.h"
#include "session.h"

static int64_t sep_write(void *h, const uint8_t *p, size_t n) {
  return kp_mux_stream_write(h, p, n);
}
static void sep_consumed(void *h, size_t n) { kp_mux_stream_consume(h, n); }
static void sep_held(void *h) { kp_mux_stream_reader_held(h); }
static void sep_shutdown(void *h) { kp_mux_stream_close(h); }
static void sep_abort(void *h, int err) {
  (void)err;
  /* The relay is going away: later stream callbacks must not reach it. */
  kp_mux_stream_set_user_data(h, NULL);
  kp_mux_stream_reset(h);
}

/* Streams cannot pause: the receive window bounds what arrives. */
const kp__ep_ops_t kp__stream_ep_ops = {
    .write = sep_write,
    .read = NULL,
    .consumed = sep_consumed,
    .held = sep_held,
    .pending = NULL,
    .shutdown = sep_shutdown,
    .abort = sep_abort,
};
