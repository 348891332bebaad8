/* fuzz_mux.c - libFuzzer target for the yamux header decoder.
 * Any input must decode to KP_EAGAIN, KP_EPROTO or a header that encodes
 * back to the same 12 bytes (the codec is a bijection on valid headers). */
#include <stdlib.h>
#include <string.h>

#include "kopilot.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  kp_mux_header_t h;
  int rc = kp_mux_header_decode(data, size, &h);
  if (rc == KP_EAGAIN) {
    if (size >= KP_MUX_HEADER_SIZE) abort();
    return 0;
  }
  if (rc == KP_EPROTO) {
    if (data[0] == KP_MUX_VERSION && data[1] <= KP_MUX_TYPE_GO_AWAY) abort();
    return 0;
  }
  if (rc != KP_MUX_HEADER_SIZE) abort();
  {
    uint8_t out[KP_MUX_HEADER_SIZE];
    kp_mux_header_encode(out, &h);
    if (memcmp(out, data, KP_MUX_HEADER_SIZE) != 0) abort();
  }
  return 0;
}
