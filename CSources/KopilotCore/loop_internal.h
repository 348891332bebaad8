/* loop_internal.h - the loop's private state, for the core's own files. */
#ifndef KOPILOT_LOOP_INTERNAL_H
#define KOPILOT_LOOP_INTERNAL_H

#include "internal.h"

#include <uv.h>

/* A work item for kp_loop_post. */
typedef struct kp__work {
  struct kp__work *next;
  void (*fn)(void *);
  void *arg;
  int embedded; /* the poster's memory (kp__loop_post_node), not freed */
} kp__work_t;

/* Work deferred to the end of the loop iteration, just before the loop
 * waits for I/O: conns queue their writes here so that everything produced
 * in one iteration goes out in one write per conn ("corking"). */
typedef struct kp__deferred {
  struct kp__deferred *next, *prev;
  void (*run)(struct kp__deferred *d);
  int queued;
} kp__deferred_t;

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
  uv_prepare_t deferred_run; /* active while `deferred` is not empty */
  kp__deferred_t *deferred;
};

uv_loop_t *kp__loop_uv(kp_loop_t *l);
/* Posts work whose node is the caller's (set fn and arg first): no
 * allocation, so it cannot fail for want of memory. The node must stay
 * valid until fn runs and must not be posted again before that; fn may
 * free it. Returns 0 or KP_ECLOSED. */
int kp__loop_post_node(kp_loop_t *l, kp__work_t *w);
/* Loop thread only. Queues d (once) to run before the loop next waits. */
void kp__loop_defer(kp_loop_t *l, kp__deferred_t *d);
/* Takes d off the queue (before its owner is freed). */
void kp__loop_undefer(kp_loop_t *l, kp__deferred_t *d);

#endif
