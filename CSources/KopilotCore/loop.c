/* loop.c - a libuv loop on its own thread, with a thread-safe work queue.
 *
 * Any thread may post a function to run on the loop thread; a uv_async_t
 * wakes the loop, which drains the queue in FIFO order. uv_async_send
 * coalesces wake-ups, so the queue (not the async) carries the work. */
#include "loop_internal.h"

#include <openssl/crypto.h>
#include <signal.h>
#include <stdio.h>

static void close_leftover(uv_handle_t *h, void *arg) {
  (void)arg;
  if (!uv_is_closing(h)) uv_close(h, NULL);
}

static void run_posted(uv_async_t *a) {
  kp_loop_t *l = a->data;
  for (;;) {
    kp__work_t *w;
    uv_mutex_lock(&l->mu);
    w = l->head;
    l->head = NULL;
    l->tail = NULL;
    uv_mutex_unlock(&l->mu);
    if (w == NULL) break;
    while (w != NULL) {
      kp__work_t *next = w->next;
      int embedded = w->embedded; /* fn may free an embedded node */
      w->fn(w->arg);
      if (!embedded) free(w);
      w = next;
    }
  }
  if (l->stopping) {
    /* Close every handle left (the async among them): the loop then ends
     * once their close callbacks ran. Owners free their handles before
     * kp_loop_free; this only keeps a forgotten one from hanging the join. */
    uv_walk(&l->uv, close_leftover, NULL);
  }
}

/* Runs everything deferred, including what the runs defer in turn: the
 * loop must not wait for I/O with work still queued. */
static void run_deferred(uv_prepare_t *p) {
  kp_loop_t *l = p->data;
  while (l->deferred != NULL) {
    kp__deferred_t *d = l->deferred;
    l->deferred = d->next;
    if (l->deferred) l->deferred->prev = NULL;
    d->next = d->prev = NULL;
    d->queued = 0;
    d->run(d);
  }
  uv_prepare_stop(p);
}

void kp__loop_defer(kp_loop_t *l, kp__deferred_t *d) {
  if (d->queued) return;
  d->queued = 1;
  d->prev = NULL;
  d->next = l->deferred;
  if (l->deferred) l->deferred->prev = d;
  l->deferred = d;
  uv_prepare_start(&l->deferred_run, run_deferred);
}

void kp__loop_undefer(kp_loop_t *l, kp__deferred_t *d) {
  if (!d->queued) return;
  if (d->prev) d->prev->next = d->next;
  else l->deferred = d->next;
  if (d->next) d->next->prev = d->prev;
  d->next = d->prev = NULL;
  d->queued = 0;
}

static void loop_thread(void *arg) {
  kp_loop_t *l = arg;
  l->thread_id = uv_thread_self();
  uv_sem_post(&l->started);
  uv_run(&l->uv, UV_RUN_DEFAULT);
  /* Frees this thread's OpenSSL state (its error queue, its DRBGs) now,
   * while the thread is whole, rather than in a key destructor during the
   * thread's exit, where a leak checker scanning at that moment no longer
   * sees the thread's stack that points at them. */
  OPENSSL_thread_stop();
}

int kp_loop_new(kp_loop_t **out) {
  kp_loop_t *l;
  int rc;
  *out = NULL;
  /* A write to a socket the peer already closed raises SIGPIPE, whose
   * default action ends the process: one caller hanging up would kill the
   * hub. libuv does not ignore it for us; EPIPE from the write is enough. */
  signal(SIGPIPE, SIG_IGN);
  l = calloc(1, sizeof(*l));
  if (l == NULL) return KP_ENOMEM;
  rc = uv_loop_init(&l->uv);
  if (rc != 0) goto fail_loop;
  rc = uv_mutex_init(&l->mu);
  if (rc != 0) goto fail_mutex;
  rc = uv_async_init(&l->uv, &l->async, run_posted);
  if (rc != 0) goto fail_async;
  l->async.data = l;
  l->uv.data = l;
  uv_prepare_init(&l->uv, &l->deferred_run);
  l->deferred_run.data = l;
  rc = uv_sem_init(&l->started, 0);
  if (rc != 0) goto fail_sem;
  rc = uv_thread_create(&l->thread, loop_thread, l);
  if (rc != 0) goto fail_thread;
  uv_sem_wait(&l->started);
  *out = l;
  return 0;

fail_thread:
  uv_sem_destroy(&l->started);
fail_sem:
  uv_close((uv_handle_t *)&l->deferred_run, NULL);
  uv_close((uv_handle_t *)&l->async, NULL);
  uv_run(&l->uv, UV_RUN_NOWAIT);
fail_async:
  uv_mutex_destroy(&l->mu);
fail_mutex:
  uv_loop_close(&l->uv);
fail_loop:
  free(l);
  return rc;
}

/* Appends w; `last` also closes the queue in the same critical section,
 * so nothing can be queued behind the stop request. */
static int loop_enqueue(kp_loop_t *l, kp__work_t *w, int last) {
  w->next = NULL;
  uv_mutex_lock(&l->mu);
  if (l->closed) {
    uv_mutex_unlock(&l->mu);
    return KP_ECLOSED;
  }
  if (l->tail != NULL)
    l->tail->next = w;
  else
    l->head = w;
  l->tail = w;
  if (last) l->closed = 1;
  uv_mutex_unlock(&l->mu);
  uv_async_send(&l->async);
  return 0;
}

static int loop_post(kp_loop_t *l, void (*fn)(void *), void *arg, int last) {
  kp__work_t *w = malloc(sizeof(*w));
  int rc;
  if (w == NULL) return KP_ENOMEM;
  w->fn = fn;
  w->arg = arg;
  w->embedded = 0;
  rc = loop_enqueue(l, w, last);
  if (rc != 0) free(w);
  return rc;
}

int kp__loop_post_node(kp_loop_t *l, kp__work_t *w) {
  w->embedded = 1;
  return loop_enqueue(l, w, 0);
}

int kp_loop_post(kp_loop_t *l, void (*fn)(void *), void *arg) {
  return loop_post(l, fn, arg, 0);
}

int kp_loop_is_current(kp_loop_t *l) {
  uv_thread_t self = uv_thread_self();
  return uv_thread_equal(&self, &l->thread_id);
}

uint64_t kp_loop_now(kp_loop_t *l) { return uv_now(&l->uv); }

static void stop_on_loop(void *arg) {
  kp_loop_t *l = arg;
  l->stopping = 1;
}

void kp_loop_free(kp_loop_t *l) {
  if (l == NULL) return;
  /* The stop request is the last work item: posts after it are refused,
   * posts before it still run. */
  if (loop_post(l, stop_on_loop, l, 1) != 0) return; /* freed twice */
  uv_thread_join(&l->thread);
  if (uv_loop_close(&l->uv) != 0)
    fprintf(stderr, "kopilot: loop closed with handles still open\n");
  uv_mutex_destroy(&l->mu);
  uv_sem_destroy(&l->started);
  free(l);
}

uv_loop_t *kp__loop_uv(kp_loop_t *l) { return &l->uv; }

/* ---- one-shot timers ---- */

struct kp_timer {
  uv_timer_t uv;
  kp_loop_t *loop;
  uint64_t ms;
  void (*fn)(void *);
  void *arg;
  int done; /* fired or cancelled */
};

static void timer_closed(uv_handle_t *h) { free(h->data); }

static void timer_fire(uv_timer_t *h) {
  kp_timer_t *t = h->data;
  t->done = 1;
  t->fn(t->arg);
  uv_close((uv_handle_t *)&t->uv, timer_closed);
}

static void timer_arm(void *arg) {
  kp_timer_t *t = arg;
  uv_timer_init(&t->loop->uv, &t->uv);
  t->uv.data = t;
  if (t->done) { /* cancelled before it was armed */
    uv_close((uv_handle_t *)&t->uv, timer_closed);
    return;
  }
  uv_timer_start(&t->uv, timer_fire, t->ms, 0);
}

int kp_timer_start(kp_loop_t *l, uint64_t ms, void (*fn)(void *), void *arg,
                   kp_timer_t **out) {
  kp_timer_t *t = calloc(1, sizeof(*t));
  int rc;
  if (t == NULL) return KP_ENOMEM;
  t->loop = l;
  t->ms = ms;
  t->fn = fn;
  t->arg = arg;
  if (out) *out = t;
  /* Armed on the loop thread: uv handles are not thread-safe. */
  rc = kp_loop_post(l, timer_arm, t);
  if (rc != 0) {
    free(t);
    if (out) *out = NULL;
  }
  return rc;
}

int kp_timer_cancel(kp_timer_t *t) {
  if (t->done) return KP_ECLOSED;
  t->done = 1;
  /* Not armed yet (the post is still queued): timer_arm sees done. */
  if (t->uv.data == t) {
    uv_timer_stop(&t->uv);
    uv_close((uv_handle_t *)&t->uv, timer_closed);
  }
  return 0;
}
