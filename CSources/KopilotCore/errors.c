/* errors.c - error names and messages (one X-macro table in kopilot.h). */
#include "internal.h"

#include <uv.h>

const char *kp_strerror(int err) {
  switch (err) {
#define KP__ERR_MSG(name, code, msg) \
  case code:                         \
    return msg;
    KP_ERRNO_MAP(KP__ERR_MSG)
#undef KP__ERR_MSG
  case 0:
    return "success";
  default:
    return err < 0 ? uv_strerror(err) : "unknown error";
  }
}

const char *kp_err_name(int err) {
  switch (err) {
#define KP__ERR_NAME(name, code, msg) \
  case code:                          \
    return "KP_" #name;
    KP_ERRNO_MAP(KP__ERR_NAME)
#undef KP__ERR_NAME
  case 0:
    return "KP_OK";
  default:
    return err < 0 ? uv_err_name(err) : "UNKNOWN";
  }
}

int kp__strieq(const char *a, size_t alen, const char *b) {
  size_t i;
  for (i = 0; i < alen; i++) {
    unsigned char x = (unsigned char)a[i], y = (unsigned char)b[i];
    if (y == 0) return 0;
    if (x >= 'A' && x <= 'Z') x = (unsigned char)(x + 32);
    if (y >= 'A' && y <= 'Z') y = (unsigned char)(y + 32);
    if (x != y) return 0;
  }
  return b[alen] == 0;
}
