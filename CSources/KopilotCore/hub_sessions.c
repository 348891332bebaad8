/* hub_sessions.c - agent sessions by cluster on one loop, the placement
 * table that tells every loop which loops hold sessions of a cluster, and
 * listing and dropping sessions across the loops. See hub.c. */
#include "hub_internal.h"

/* Posts `done` once both the listener and every conn are closed. */
void kp__hub_maybe_done(kp_hub_t *hub) {
  if (hub->stopping && hub->listener_closed && hub->timer_closed &&
      (!hub->has_peer_listener || hub->peer_listener_closed) &&
      hub->open_conns == 0 && !hub->done_posted) {
    hub->done_posted = 1;
    uv_sem_post(&hub->done);
  }
}

static uint32_t hash_str(const char *s) {
  uint32_t h = 2166136261u; /* FNV-1a */
  while (*s) {
    h ^= (uint8_t)*s++;
    h *= 16777619u;
  }
  return h;
}

hub_cluster_t *kp__hub_cluster_find(kp_hub_t *hub, const char *id, int create) {
  uint32_t b = hash_str(id) % HUB_BUCKETS;
  hub_cluster_t *c;
  for (c = hub->buckets[b]; c; c = c->next)
    if (strcmp(c->id, id) == 0) return c;
  if (!create) return NULL;
  c = calloc(1, sizeof(*c) + strlen(id) + 1);
  if (c == NULL) return NULL;
  strcpy(c->id, id);
  c->next = hub->buckets[b];
  hub->buckets[b] = c;
  return c;
}

/* The placement entry of a cluster; created when asked (NULL: out of
 * memory, or absent and not asked). Any thread. */
static hub_place_t *place_find(hub_group_t *g, const char *id, int create) {
  uint32_t b = hash_str(id) % HUB_PLACE_BUCKETS;
  hub_place_t *p;
  for (p = atomic_load_explicit(&g->places[b], memory_order_acquire); p;
       p = atomic_load_explicit(&p->next, memory_order_acquire))
    if (strcmp(p->id, id) == 0) return p;
  if (!create) return NULL;
  uv_mutex_lock(&g->mu);
  /* Another loop may have added it since the lock-free look. */
  for (p = atomic_load_explicit(&g->places[b], memory_order_acquire); p;
       p = atomic_load_explicit(&p->next, memory_order_acquire))
    if (strcmp(p->id, id) == 0) break;
  if (p == NULL && (p = calloc(1, sizeof(*p) + strlen(id) + 1)) != NULL) {
    p->count = calloc(g->n, sizeof(*p->count));
    if (p->count == NULL) {
      free(p);
      p = NULL;
    } else {
      strcpy(p->id, id);
      atomic_store_explicit(&p->next,
                            atomic_load_explicit(&g->places[b],
                                                 memory_order_relaxed),
                            memory_order_relaxed);
      atomic_store_explicit(&g->places[b], p, memory_order_release);
    }
  }
  uv_mutex_unlock(&g->mu);
  return p;
}

void kp__hub_place_count(kp_hub_t *hub, const char *id, int delta) {
  hub_place_t *p;
  if (hub->group->n < 2) return;
  p = place_find(hub->group, id, delta > 0);
  if (p == NULL) return;
  if (delta > 0) {
    atomic_fetch_add(&p->count[hub->index], 1);
  } else {
    /* Never below 0, should an add have failed for want of memory. */
    unsigned v = atomic_load(&p->count[hub->index]);
    while (v > 0 &&
           !atomic_compare_exchange_weak(&p->count[hub->index], &v, v - 1)) {
    }
  }
}

/* Another loop for `cluster`: for a request (agent 0), one that holds a
 * session of it, NULL when none does; for an agent session, the loop with
 * the fewest of its sessions when this loop has more than that (so a
 * cluster's sessions spread over the loops), else NULL. The first loop
 * looked at rotates, so requests spread over the loops that qualify. */
kp_hub_t *kp__hub_other_loop(kp_hub_t *hub, const char *cluster, int agent) {
  hub_group_t *g = hub->group;
  hub_place_t *p;
  size_t i, start, best = g->n;
  unsigned mine, fewest = UINT_MAX;
  if (g->n < 2 || !atomic_load_explicit(&g->open, memory_order_acquire))
    return NULL;
  p = place_find(g, cluster, 0);
  mine = p ? atomic_load(&p->count[hub->index]) : 0;
  start = atomic_fetch_add_explicit(&g->spread, 1, memory_order_relaxed) % g->n;
  for (i = 0; i < g->n; i++) {
    size_t j = (start + i) % g->n;
    unsigned n = p ? atomic_load(&p->count[j]) : 0;
    if (j == hub->index) continue;
    if (!agent && n > 0) return g->shards[j];
    if (agent && n < fewest) {
      fewest = n;
      best = j;
    }
  }
  return agent && best < g->n && fewest < mine ? g->shards[best] : NULL;
}

static void cluster_remove_session(kp_hub_t *hub, kp__sess_t *s) {
  hub_cluster_t *c = kp__hub_cluster_find(hub, s->cluster, 0);
  if (c == NULL) return;
  kp__hub_place_count(hub, s->cluster, -1);
  if (s->prev) s->prev->next = s->next;
  else c->sessions = s->next;
  if (s->next) s->next->prev = s->prev;
  s->next = s->prev = NULL;
  c->count--;
  if (c->count == 0) {
    uint32_t b = hash_str(c->id) % HUB_BUCKETS;
    hub_cluster_t **pp = &hub->buckets[b];
    while (*pp != c) pp = &(*pp)->next;
    *pp = c->next;
    free(c);
  }
}

/* ---- agent sessions ---- */

static void hub_sess_stream(kp__sess_t *s, kp_mux_stream_t *st) {
  (void)s;
  /* Agents do not open streams to the hub. */
  kp_mux_stream_reset(st);
}

static void hub_sess_close(kp__sess_t *s, int status) {
  kp_hub_t *hub = s->ud;
  if (s->cluster == NULL) {
    /* Ended before it was announced (bad bytes right behind the upgrade,
     * or out of memory): nothing to remove and nobody to tell. */
    hub->open_conns--;
    kp__hub_maybe_done(hub);
    return;
  }
  cluster_remove_session(hub, s);
  hub->open_conns--;
  if (hub->cbs.on_session)
    hub->cbs.on_session(hub, s->cluster, s->id, 0, status, hub->ud);
  free(s->cluster);
  s->cluster = NULL;
  kp__hub_maybe_done(hub);
}

const kp__sess_owner_t kp__hub_sess_owner = {
    .on_stream = hub_sess_stream,
    .on_close = hub_sess_close,
};

/* Least open streams wins; ties go to a random one among them, so a burst
 * of new requests spreads over equal sessions. */
kp__sess_t *kp__hub_pick_session(hub_cluster_t *c, kp__sess_t *skip) {
  kp__sess_t *s, *best = NULL;
  uint32_t best_n = UINT32_MAX, ties = 0;
  for (s = c->sessions; s; s = s->next) {
    uint32_t n;
    if (s == skip || s->closing || s->mux_closed || s->refusing) continue;
    n = kp_mux_num_streams(s->mux);
    if (n < best_n) {
      best = s;
      best_n = n;
      ties = 1;
    } else if (n == best_n && (uint32_t)rand() % ++ties == 0) {
      best = s;
    }
  }
  return best;
}

typedef struct drop_req {
  kp_hub_t *hub;
  char *cluster;
} drop_req_t;

static void drop_run(void *arg) {
  drop_req_t *d = arg;
  hub_cluster_t *c = kp__hub_cluster_find(d->hub, d->cluster, 0);
  kp__sess_t *s;
  for (s = c ? c->sessions : NULL; s; s = s->next)
    if (!s->closing) kp__sess_close(s, KP_ECLOSED);
  free(d->cluster);
  free(d);
}

int kp_hub_drop_cluster(kp_hub_t *hub, const char *cluster) {
  hub_group_t *g = hub->group;
  size_t i;
  int rc = 0;
  for (i = 0; i < g->n && rc == 0; i++) {
    drop_req_t *d = malloc(sizeof(*d));
    if (d == NULL || (d->cluster = strdup(cluster)) == NULL) {
      free(d);
      return KP_ENOMEM;
    }
    d->hub = g->shards[i];
    rc = kp_loop_post(d->hub->loop, drop_run, d);
    if (rc != 0) {
      free(d->cluster);
      free(d);
    }
  }
  return rc;
}

/* ---- listing sessions ---- */

typedef struct list_req {
  kp_hub_t *hub;
  void (*cb)(const kp_hub_session_info_t *info, void *arg);
  void *arg;
  uv_sem_t done;
} list_req_t;

static void list_run(void *arg) {
  list_req_t *l = arg;
  size_t b;
  for (b = 0; b < HUB_BUCKETS; b++) {
    hub_cluster_t *c;
    for (c = l->hub->buckets[b]; c; c = c->next) {
      kp__sess_t *s;
      for (s = c->sessions; s; s = s->next) {
        kp_hub_session_info_t info;
        if (s->closing || s->mux_closed) continue;
        info.cluster = c->id;
        info.session = s->id;
        info.streams = kp_mux_num_streams(s->mux);
        info.framed = s->framed;
        info.peer = s->conn->peer;
        info.loop = l->hub->index;
        l->cb(&info, l->arg);
      }
    }
  }
  uv_sem_post(&l->done);
}

int kp_hub_list_sessions(kp_hub_t *hub,
                         void (*cb)(const kp_hub_session_info_t *info,
                                    void *arg),
                         void *arg) {
  list_req_t l;
  size_t i;
  int rc = 0;
  l.cb = cb;
  l.arg = arg;
  if (uv_sem_init(&l.done, 0) != 0) return KP_ENOMEM;
  for (i = 0; i < hub->group->n && rc == 0; i++) {
    l.hub = hub->group->shards[i];
    rc = kp_loop_post(l.hub->loop, list_run, &l);
    if (rc == 0) uv_sem_wait(&l.done);
  }
  uv_sem_destroy(&l.done);
  return rc;
}
