/* buf.c - pooled, reference-counted chunks.
 *
 * Every read lands in a chunk; payloads handed up are pointers into it, and
 * whoever keeps them past a callback holds a reference. Standard-size chunks
 * are recycled through a small per-thread free list: the loop thread that
 * reads is also the one that frees in the common case, so no lock is needed,
 * and a chunk freed on another thread just joins that thread's list. The
 * list is capped so that a burst does not pin memory for ever. */
#include "internal.h"

#include <pthread.h>
#include <stdatomic.h>

struct kp_chunk {
  atomic_uint refs;
  uint32_t capacity;
  kp_chunk_t *next_free; /* valid only while pooled */
  /* Data follows, 16-byte aligned. */
  _Alignas(16) uint8_t data[];
};

static _Thread_local kp_chunk_t *pool_head;
static _Thread_local unsigned pool_len;
static atomic_size_t live_chunks;
static pthread_key_t pool_key;
static pthread_once_t pool_once = PTHREAD_ONCE_INIT;

/* A thread's pool is drained when the thread exits, so chunks never outlive
 * the thread that pooled them (and leak checkers stay quiet). */
static void pool_drain(void *unused) {
  (void)unused;
  while (pool_head != NULL) {
    kp_chunk_t *c = pool_head;
    pool_head = c->next_free;
    atomic_fetch_sub(&live_chunks, 1);
    free(c);
  }
  pool_len = 0;
}
static void pool_key_init(void) { pthread_key_create(&pool_key, pool_drain); }

kp_chunk_t *kp_chunk_new(size_t size) {
  kp_chunk_t *c;
  if (size == 0) size = KP_CHUNK_SIZE;
  if (size > UINT32_MAX) return NULL;
  if (size <= KP_CHUNK_SIZE && pool_head != NULL) {
    c = pool_head;
    pool_head = c->next_free;
    pool_len--;
  } else {
    size_t cap = size <= KP_CHUNK_SIZE ? KP_CHUNK_SIZE : size;
    c = malloc(sizeof(*c) + cap);
    if (c == NULL) return NULL;
    c->capacity = (uint32_t)cap;
    atomic_fetch_add(&live_chunks, 1);
  }
  atomic_init(&c->refs, 1);
  c->next_free = NULL;
  return c;
}

void kp_chunk_ref(kp_chunk_t *c) {
  atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

void kp_chunk_unref(kp_chunk_t *c) {
  if (c == NULL) return;
  if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) != 1)
    return;
  if (c->capacity == KP_CHUNK_SIZE && pool_len < KP_CHUNK_POOL_MAX) {
    if (pool_head == NULL) {
      pthread_once(&pool_once, pool_key_init);
      pthread_setspecific(pool_key, &pool_once); /* any non-NULL value */
    }
    c->next_free = pool_head;
    pool_head = c;
    pool_len++;
    return;
  }
  atomic_fetch_sub(&live_chunks, 1);
  free(c);
}

uint8_t *kp_chunk_data(kp_chunk_t *c) { return c->data; }
size_t kp_chunk_capacity(const kp_chunk_t *c) { return c->capacity; }
size_t kp_chunk_live_count(void) { return atomic_load(&live_chunks); }

/* ---- the memory budget ---- */

static atomic_uint_fast64_t budget_limit, budget_used;

void kp_memory_budget_set(uint64_t bytes) { atomic_store(&budget_limit, bytes); }

void kp_memory_budget_get(uint64_t *limit, uint64_t *used) {
  if (limit) *limit = atomic_load(&budget_limit);
  if (used) *used = atomic_load(&budget_used);
}

int kp__budget_take(uint64_t n) {
  uint64_t limit = atomic_load(&budget_limit);
  uint64_t was = atomic_fetch_add(&budget_used, n);
  if (limit == 0 || was + n <= limit) return 1;
  atomic_fetch_sub(&budget_used, n);
  return 0;
}

void kp__budget_give(uint64_t n) { atomic_fetch_sub(&budget_used, n); }
