/* mux.c - the hashicorp/yamux frame header codec (yamux spec.md, "Framing").
 *
 * Every yamux frame starts with the same 12-byte header, all fields big
 * endian: Version(8) Type(8) Flags(16) StreamID(32) Length(32). Only version
 * 0 exists, and only the four types Data, WindowUpdate, Ping and GoAway; the
 * Go implementation's recvLoop rejects anything else as a session error, and
 * so do we. The meaning of Length depends on the type (payload size, window
 * delta, opaque ping value, GoAway code), which is the session's business
 * (mux_session.c): the codec does no I/O and keeps no state. */
#include "internal.h"

void kp_mux_header_encode(uint8_t out[KP_MUX_HEADER_SIZE],
                          const kp_mux_header_t *h) {
  out[0] = h->version;
  out[1] = h->type;
  kp__store16(out + 2, h->flags);
  kp__store32(out + 4, h->stream_id);
  kp__store32(out + 8, h->length);
}

int kp_mux_header_decode(const uint8_t *in, size_t len, kp_mux_header_t *h) {
  if (len < KP_MUX_HEADER_SIZE) return KP_EAGAIN;
  /* spec.md: "The version field is used for future backward compatibility.
   * At the current time, the field is always set to 0". */
  if (in[0] != KP_MUX_VERSION) return KP_EPROTO;
  if (in[1] > KP_MUX_TYPE_GO_AWAY) return KP_EPROTO;
  h->version = in[0];
  h->type = in[1];
  h->flags = kp__load16(in + 2);
  h->stream_id = kp__load32(in + 4);
  h->length = kp__load32(in + 8);
  return KP_MUX_HEADER_SIZE;
}
