/* loop_internal.h - the loop's private state, for the core's own files. */
#ifndef KOPILOT_LOOP_INTERNAL_H
#define KOPILOT_LOOP_INTERNAL_H

#include "internal.h"

#include <uv.h>

struct kp__work;

struct kp_loop {
  uv_loop_t uv;
  uv_async_t async;
  uv_mutex_t mu; /* guards head, tail, closed */
  struct kp__work *head, *tail;
  int closed;   /* no more posts accepted */
  int stopping; /* loop thread: close the async after this drain */
  uv_thread_t thread;
  uv_thread_t thread_id;
  uv_sem_t started;
};

uv_loop_t *kp__loop_uv(kp_loop_t *l);

#endif
