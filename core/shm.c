/* shm.c: the shared-memory region every process of a server sees, and
 * every thread of each. It is made once, by mmap(MAP_SHARED |
 * MAP_ANONYMOUS): by the master before it forks the workers (they inherit
 * it at the same address), or by a single process on first use. Inside,
 * offsets from its start, never pointers:
 *
 *   header     sizes, the master's figures, the metrics' lock
 *   slots      one per worker: heartbeat, the task running, gauges
 *   metrics    the series' keys, then each slot's counters (metrics.c)
 *   dictionary luaserve.shared (shmdict.c)
 *
 * Locks are process-shared robust mutexes (ls__shm_lock): a process that
 * dies holding one leaves it to the next locker with EOWNERDEAD, who
 * repairs what it guards and marks it consistent. Nothing here calls Lua
 * or raises. Any thread. */
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "internal.h"

#define LS_SHM_MAGIC 0x316d68737365756cull   /* "luaseshm1" */
#define LS_SHM_DEFAULT_DICT (64u * 1024 * 1024)

ls_shm_t *ls__shm_region;
static size_t default_dict = LS_SHM_DEFAULT_DICT;
static pthread_mutex_t create_lock = PTHREAD_MUTEX_INITIALIZER;


static size_t align_up(size_t n, size_t a) {
  return (n + a - 1) & ~(a - 1);
}


int ls__shm_mutex_init(pthread_mutex_t *m) {
  pthread_mutexattr_t a;
  int r = pthread_mutexattr_init(&a);
  if (r == 0)
    r = pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
  if (r == 0)
    r = pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
  if (r == 0)
    r = pthread_mutex_init(m, &a);
  pthread_mutexattr_destroy(&a);
  return r ? -r : 0;
}


int ls__shm_lock(pthread_mutex_t *m, void (*repair)(void *), void *arg) {
  int r = pthread_mutex_lock(m);
  if (r == EOWNERDEAD) {
    /* Its owner died inside: what it guards may be half written. */
    if (repair)
      repair(arg);
    pthread_mutex_consistent(m);
    return 1;
  }
  return r == 0 ? 0 : -r;
}


int ls__shm_create(size_t dict_bytes, unsigned nslots, unsigned max_series) {
  pthread_mutex_lock(&create_lock);
  if (ls__shm_region) {
    pthread_mutex_unlock(&create_lock);
    return UV_EEXIST;
  }
  if (dict_bytes == 0)
    dict_bytes = default_dict;
  if (nslots == 0)
    nslots = 1;
  size_t off = align_up(sizeof(ls_shm_t), 64);
  size_t slots_off = off;
  off = align_up(off + (size_t)nslots * sizeof(ls_wslot_t), 64);
  size_t keys_off = off;
  off = align_up(off + (size_t)max_series * sizeof(ls_series_key_t), 64);
  size_t counters_off = off;
  off = align_up(off + (size_t)nslots * max_series * sizeof(ls_series_t), 4096);
  size_t dict_off = off;
  size_t dict_size = ls__dict_region_size(dict_bytes);
  size_t total = align_up(dict_off + dict_size, 4096);
  void *p = mmap(NULL, total, PROT_READ | PROT_WRITE,
                 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    pthread_mutex_unlock(&create_lock);
    return -errno;
  }
  ls_shm_t *h = p;   /* the mapping is zero-filled */
  h->size = total;
  h->nslots = nslots;
  h->max_series = max_series;
  h->slots_off = slots_off;
  h->keys_off = keys_off;
  h->counters_off = counters_off;
  h->dict_off = dict_off;
  int err = ls__shm_mutex_init(&h->meta_lock);
  if (err == 0)
    err = ls__dict_init((char *)p + dict_off, dict_size, dict_bytes);
  if (err) {
    munmap(p, total);
    pthread_mutex_unlock(&create_lock);
    return err;
  }
  h->magic = LS_SHM_MAGIC;
  ls__shm_region = h;
  pthread_mutex_unlock(&create_lock);
  return 0;
}


ls_shm_t *ls__shm(void) {
  ls_shm_t *h = __atomic_load_n(&ls__shm_region, __ATOMIC_ACQUIRE);
  if (h)
    return h;
  int err = ls__shm_create(0, 1, 0);
  if (err && err != UV_EEXIST)
    return NULL;
  return ls__shm_region;
}


ls_wslot_t *ls__shm_slot(ls_shm_t *h, unsigned i) {
  return (ls_wslot_t *)((char *)h + h->slots_off) + i;
}


void *ls__shm_dict(ls_shm_t *h) {
  return (char *)h + h->dict_off;
}


int ls__shm_set_default_dict(size_t bytes) {
  pthread_mutex_lock(&create_lock);
  default_dict = bytes;
  int made = ls__shm_region != NULL;
  pthread_mutex_unlock(&create_lock);
  return made;
}


/* shm_init{shared_size = bytes, slots = n, series = n}: make the region
 * now (the master, before it forks; a single process, before it loads the
 * app). true, or nil, err; "file exists" when it is made already. */
int ls__lua_shm_init(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "shared_size");
  double bytes = luaL_optnumber(L, -1, (double)default_dict);
  lua_getfield(L, 1, "slots");
  double slots = luaL_optnumber(L, -1, 1);
  lua_getfield(L, 1, "series");
  double series = luaL_optnumber(L, -1, 0);
  lua_pop(L, 3);
  luaL_argcheck(L, bytes >= 1024 && bytes < 1e13, 1,
                "shared_size must be from 1024 bytes to 10 TB");
  luaL_argcheck(L, slots >= 1 && slots <= LS_SHM_MAX_SLOTS, 1,
                "slots out of range");
  luaL_argcheck(L, series >= 0 && series <= 65536, 1, "series out of range");
  int err = ls__shm_create((size_t)bytes, (unsigned)slots, (unsigned)series);
  if (err)
    return ls__push_error(L, err);
  lua_pushboolean(L, 1);
  return 1;
}
