/* shmdict.c: the dictionary of luaserve.shared, inside the shared-memory
 * region (shm.c), so that every thread of every worker sees one. A hash
 * table of entries in an arena, with a least-recently-used list; every
 * link is an offset in 16-byte units from the dictionary's header (0:
 * none), since the region may sit at another address in another process.
 *
 * The arena is a row of chunks, each starting with its size: free ones on
 * lists by size class, used ones holding one entry (key, then the value in
 * copy.c's format, or a number). When an entry does not fit (the capacity,
 * --shared-size, counts the bytes of used chunks), set evicts: first
 * expired entries from the cold end of the LRU list, then the least
 * recently used ones; safe_set and safe_add never evict a live entry.
 *
 * Crash safety. One robust mutex guards everything. If a process dies
 * holding it, the next locker repairs the dictionary (dict_repair): the
 * chunk sizes are the only layout it trusts, and each is changed by one
 * aligned store; an entry is kept only if its `live` flag was set, which
 * happens once it is whole; everything else (hash chains, LRU list, free
 * lists, counts) is rebuilt from the walk. A replaced entry is marked dead
 * only after its successor is live; if both survive, the newer (seq) wins.
 *
 * No function here calls Lua or raises; callers copy values in and out
 * around the lock. Any thread of any process. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "internal.h"

#define UNIT 16u
#define NCLASSES 32
#define EVICT_EXPIRED_SCAN 64   /* expired entries looked for per miss */

typedef struct {
  uint32_t size;    /* units, this header included: the walk's step */
  uint32_t prev;    /* units of the chunk before; 0: the first (derived) */
  uint32_t used;    /* 1: an entry; 0: free */
  uint32_t fnext;   /* free: the next of its class (derived) */
} chunk_t;

typedef struct {    /* a free chunk */
  chunk_t c;
  uint32_t fprev;
  uint32_t pad[3];
} fchunk_t;

typedef struct {    /* a used chunk: 80 bytes, then key and value */
  chunk_t c;
  uint32_t hnext;   /* the bucket's chain */
  uint32_t lprev;   /* LRU: toward the most recently used */
  uint32_t lnext;   /* LRU: toward the least recently used */
  uint32_t hash;
  uint32_t klen;
  uint32_t live;    /* 1 once whole; 0 when dead or half written */
  uint32_t is_num;
  uint32_t vlen;
  uint64_t expires; /* uv_hrtime ns; 0: never */
  uint64_t seq;     /* when it was written: the newer wins a repair */
  double num;
  uint64_t pad;
  char data[];      /* key, then value */
} entry_t;

struct ls_dict_s {
  pthread_mutex_t lock;     /* everything below and the arena */
  uint64_t capacity;        /* bytes used chunks may take (<= the arena) */
  uint64_t bytes;           /* bytes of used chunks */
  uint64_t count;
  uint64_t seq;
  uint64_t evicted;         /* live entries evicted, ever */
  uint64_t repairs;         /* times a dead owner's lock was recovered */
  uint32_t nbuckets;        /* a power of two */
  uint32_t buckets_at;      /* units: the bucket array */
  uint32_t arena_start, arena_end;   /* units */
  uint32_t lru_head, lru_tail;       /* most / least recently used */
  uint32_t free_head[NCLASSES];
};

#define AT(d, off) ((void *)((char *)(d) + (size_t)(off) * UNIT))
#define OFF(d, p) ((uint32_t)(((char *)(p) - (char *)(d)) / UNIT))
#define BUCKETS(d) ((uint32_t *)AT(d, (d)->buckets_at))
#define COMMIT(p, v) __atomic_store_n(&(p), (v), __ATOMIC_RELEASE)

static const size_t HDR_UNITS = (sizeof(struct ls_dict_s) + UNIT - 1) / UNIT;


static uint32_t nbuckets_for(size_t arena_bytes) {
  uint32_t n = 64;
  while ((size_t)n * 128 < arena_bytes && n < (1u << 26))
    n <<= 1;
  return n;
}


static size_t arena_for(size_t capacity) {
  return (capacity + UNIT - 1) / UNIT * UNIT + 8 * UNIT;
}


size_t ls__dict_region_size(size_t capacity) {
  size_t arena = arena_for(capacity);
  return HDR_UNITS * UNIT + (size_t)nbuckets_for(arena) * 4 + UNIT + arena;
}


/* ---- chunks ------------------------------------------------------------- */

static unsigned size_class(uint32_t units) {
  unsigned c = 0;
  while (units >>= 1)
    c++;
  return c < NCLASSES ? c : NCLASSES - 1;
}


static void free_push(ls_dict_t *d, uint32_t off) {
  fchunk_t *f = AT(d, off);
  unsigned c = size_class(f->c.size);
  f->c.fnext = d->free_head[c];
  f->fprev = 0;
  if (d->free_head[c])
    ((fchunk_t *)AT(d, d->free_head[c]))->fprev = off;
  d->free_head[c] = off;
}


static void free_unlink(ls_dict_t *d, uint32_t off) {
  fchunk_t *f = AT(d, off);
  unsigned c = size_class(f->c.size);
  if (f->fprev)
    ((fchunk_t *)AT(d, f->fprev))->c.fnext = f->c.fnext;
  else
    d->free_head[c] = f->c.fnext;
  if (f->c.fnext)
    ((fchunk_t *)AT(d, f->c.fnext))->fprev = f->fprev;
}


static chunk_t *next_chunk(ls_dict_t *d, uint32_t off) {
  chunk_t *c = AT(d, off);
  uint32_t n = off + c->size;
  return n < d->arena_end ? AT(d, n) : NULL;
}


/* A used chunk of `units` (entry->live still 0), or 0 when no free chunk
 * is that big. */
static uint32_t chunk_alloc(ls_dict_t *d, uint32_t units) {
  uint32_t found = 0;
  for (unsigned c = size_class(units); c < NCLASSES && !found; c++) {
    int scan = 32;   /* the first class holds smaller chunks too */
    for (uint32_t o = d->free_head[c]; o && scan--; ) {
      chunk_t *ch = AT(d, o);
      if (ch->size >= units) {
        found = o;
        break;
      }
      o = ch->fnext;
    }
  }
  if (!found)
    return 0;
  free_unlink(d, found);
  chunk_t *ch = AT(d, found);
  ((entry_t *)ch)->live = 0;
  uint32_t size = ch->size;
  if (size - units >= 6) {   /* split: the rest stays free */
    uint32_t rest = found + units;
    chunk_t *r = AT(d, rest);
    r->size = size - units;
    r->prev = units;
    r->used = 0;
    chunk_t *after = next_chunk(d, found);
    if (after)
      after->prev = size - units;
    COMMIT(ch->size, units);   /* the walk sees the split from here on */
    free_push(d, rest);
  }
  ch->used = 1;
  d->bytes += (uint64_t)ch->size * UNIT;
  return found;
}


/* Free a used chunk, merging it with free neighbours. */
static void chunk_free(ls_dict_t *d, uint32_t off) {
  chunk_t *ch = AT(d, off);
  d->bytes -= (uint64_t)ch->size * UNIT;
  ((entry_t *)ch)->live = 0;
  ch->used = 0;
  chunk_t *n = next_chunk(d, off);
  if (n && !n->used) {
    free_unlink(d, OFF(d, n));
    COMMIT(ch->size, ch->size + n->size);
  }
  if (ch->prev) {
    uint32_t poff = off - ch->prev;
    chunk_t *p = AT(d, poff);
    if (!p->used) {
      free_unlink(d, poff);
      COMMIT(p->size, p->size + ch->size);
      off = poff;
      ch = p;
    }
  }
  n = next_chunk(d, off);
  if (n)
    n->prev = ch->size;
  free_push(d, off);
}


/* ---- entries, hash chains, the LRU list ------------------------------- */

static void lru_unlink(ls_dict_t *d, entry_t *e) {
  if (e->lprev) ((entry_t *)AT(d, e->lprev))->lnext = e->lnext;
  else d->lru_head = e->lnext;
  if (e->lnext) ((entry_t *)AT(d, e->lnext))->lprev = e->lprev;
  else d->lru_tail = e->lprev;
  e->lprev = e->lnext = 0;
}


static void lru_push(ls_dict_t *d, entry_t *e) {
  uint32_t off = OFF(d, e);
  e->lprev = 0;
  e->lnext = d->lru_head;
  if (d->lru_head) ((entry_t *)AT(d, d->lru_head))->lprev = off;
  else d->lru_tail = off;
  d->lru_head = off;
}


static int is_expired(const entry_t *e, uint64_t now) {
  return e->expires != 0 && e->expires <= now;
}


/* The link that points at key's entry, or at the end of its chain. */
static uint32_t *find_link(ls_dict_t *d, const char *k, size_t n,
                           uint32_t h) {
  uint32_t *link = &BUCKETS(d)[h & (d->nbuckets - 1)];
  while (*link) {
    entry_t *e = AT(d, *link);
    if (e->hash == h && e->klen == n && memcmp(e->data, k, n) == 0)
      return link;
    link = &e->hnext;
  }
  return link;
}


static uint32_t *link_of(ls_dict_t *d, entry_t *e) {
  return find_link(d, e->data, e->klen, e->hash);
}


/* Take the entry *link points at out of the dictionary. */
static void drop(ls_dict_t *d, uint32_t *link) {
  entry_t *e = AT(d, *link);
  e->live = 0;
  *link = e->hnext;
  lru_unlink(d, e);
  d->count--;
  chunk_free(d, OFF(d, e));
}


uint32_t ls__dict_hash(const char *k, size_t n) {
  uint32_t h = 2166136261u;   /* FNV-1a */
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)k[i];
    h *= 16777619u;
  }
  return h;
}


void *ls__dict_find(ls_dict_t *d, const char *k, size_t n, uint32_t h,
                    uint64_t now, int touch) {
  uint32_t *link = find_link(d, k, n, h);
  if (*link == 0)
    return NULL;
  entry_t *e = AT(d, *link);
  if (is_expired(e, now)) {
    drop(d, link);
    return NULL;
  }
  if (touch && d->lru_head != *link) {
    lru_unlink(d, e);
    lru_push(d, e);
  }
  return e;
}


void ls__dict_entry(void *entry, ls_dict_value_t *v, uint64_t *expires) {
  entry_t *e = entry;
  v->is_num = (int)e->is_num;
  v->num = e->num;
  v->data = e->data + e->klen;
  v->len = e->vlen;
  if (expires)
    *expires = e->expires;
}


void ls__dict_add_num(void *entry, double by) {
  entry_t *e = entry;
  e->num += by;   /* one aligned store: a repair sees old or new */
}


void ls__dict_delete(ls_dict_t *d, const char *k, size_t n, uint32_t h) {
  uint32_t *link = find_link(d, k, n, h);
  if (*link)
    drop(d, link);
}


/* Make room by dropping entries from the cold end, never `keep`: expired
 * ones first (a bounded scan), else (evict) the least recently used one.
 * 1 if something was dropped. */
static int make_room(ls_dict_t *d, entry_t *keep, uint64_t now, int evict) {
  int scan = EVICT_EXPIRED_SCAN;
  for (uint32_t o = d->lru_tail; o && scan--; ) {
    entry_t *e = AT(d, o);
    o = e->lprev;
    if (e != keep && is_expired(e, now)) {
      drop(d, link_of(d, e));
      return 1;
    }
  }
  if (!evict)
    return 0;
  for (uint32_t o = d->lru_tail; o; ) {
    entry_t *e = AT(d, o);
    if (e != keep) {
      drop(d, link_of(d, e));
      d->evicted++;
      return 1;
    }
    o = e->lprev;
  }
  return 0;
}


int ls__dict_store(ls_dict_t *d, const char *k, size_t n, uint32_t h,
                   const ls_dict_value_t *v, uint64_t expires, uint64_t now,
                   int flags) {
  size_t vlen = v->is_num ? 0 : v->len;
  size_t bytes = sizeof(entry_t) + n + vlen;
  uint64_t units64 = (bytes + UNIT - 1) / UNIT;
  if (units64 * UNIT > d->capacity ||
      units64 > d->arena_end - d->arena_start)
    return LS_ESHAREDFULL;   /* bigger than the whole dictionary */
  uint32_t units = (uint32_t)units64;
  uint32_t *link = find_link(d, k, n, h);
  entry_t *old = *link ? AT(d, *link) : NULL;
  if (old && is_expired(old, now)) {
    drop(d, link);
    old = NULL;
  }
  if (old && (flags & LS_DICT_ADD))
    return UV_EEXIST;
  int evict = !(flags & LS_DICT_NO_EVICT);
  uint64_t old_bytes = old ? (uint64_t)old->c.size * UNIT : 0;
  uint32_t off = 0;
  for (;;) {
    if (d->bytes - old_bytes + (uint64_t)units * UNIT <= d->capacity &&
        (off = chunk_alloc(d, units)) != 0)
      break;
    if (make_room(d, old, now, evict))
      continue;
    if (old && evict) {   /* the old value's own room: it goes anyway */
      drop(d, link_of(d, old));
      old = NULL;
      old_bytes = 0;
      continue;
    }
    return LS_ESHAREDFULL;
  }
  entry_t *e = AT(d, off);
  e->hnext = 0;
  e->hash = h;
  e->klen = (uint32_t)n;
  e->is_num = v->is_num != 0;
  e->num = v->num;
  e->vlen = (uint32_t)vlen;
  e->expires = expires;
  e->seq = ++d->seq;
  memcpy(e->data, k, n);
  if (vlen)
    memcpy(e->data + n, v->data, vlen);
  COMMIT(e->live, 1);   /* whole: a repair keeps it from here on */
  if (old) {
    uint32_t *olink = link_of(d, old);
    e->hnext = old->hnext;
    old->live = 0;
    *olink = off;
    lru_unlink(d, old);
    chunk_free(d, OFF(d, old));
  } else {
    link = find_link(d, k, n, h);   /* evictions may have moved the end */
    *link = off;
    d->count++;
  }
  lru_push(d, e);
  return 0;
}


void ls__dict_flush(ls_dict_t *d) {
  while (d->lru_head)
    drop(d, link_of(d, AT(d, d->lru_head)));
}


void ls__dict_sweep(ls_dict_t *d, uint64_t now) {
  for (uint32_t o = d->lru_tail; o; ) {
    entry_t *e = AT(d, o);
    o = e->lprev;
    if (is_expired(e, now))
      drop(d, link_of(d, e));
  }
}


int ls__dict_each(ls_dict_t *d, uint64_t now,
                  int (*fn)(void *arg, const char *k, size_t n), void *arg) {
  for (uint32_t o = d->lru_head; o; ) {
    entry_t *e = AT(d, o);
    o = e->lnext;
    if (!is_expired(e, now) && fn(arg, e->data, e->klen))
      return 1;
  }
  return 0;
}


void ls__dict_stats(ls_dict_t *d, ls_dict_stats_t *st) {
  st->count = d->count;
  st->bytes = d->bytes;
  st->capacity = d->capacity;
  st->evicted = d->evicted;
  st->repairs = d->repairs;
}


void ls__dict_set_capacity(ls_dict_t *d, uint64_t bytes) {
  uint64_t arena = (uint64_t)(d->arena_end - d->arena_start) * UNIT;
  d->capacity = bytes < arena ? bytes : arena;
}


/* ---- making, checking and repairing ------------------------------------ */

/* The arena as free chunks, coalesced, with the used ones in between;
 * each chunk's prev set. Used chunks are left as they are. */
static void rebuild_free(ls_dict_t *d) {
  memset(d->free_head, 0, sizeof(d->free_head));
  uint32_t prev = 0;
  for (uint32_t o = d->arena_start; o < d->arena_end; ) {
    chunk_t *c = AT(d, o);
    c->prev = prev;
    if (!c->used) {   /* merge the free ones that follow */
      chunk_t *n;
      while ((n = next_chunk(d, o)) != NULL && !n->used)
        COMMIT(c->size, c->size + n->size);
      free_push(d, o);
    }
    prev = c->size;
    o += c->size;
  }
}


int ls__dict_init(void *base, size_t size, size_t capacity) {
  ls_dict_t *d = base;
  int err = ls__shm_mutex_init(&d->lock);
  if (err)
    return err;
  d->nbuckets = nbuckets_for(arena_for(capacity));
  d->buckets_at = (uint32_t)HDR_UNITS;
  d->arena_start = d->buckets_at + (d->nbuckets * 4 + UNIT - 1) / UNIT;
  d->arena_end = (uint32_t)(size / UNIT);
  chunk_t *c = AT(d, d->arena_start);
  c->size = d->arena_end - d->arena_start;
  c->used = 0;
  rebuild_free(d);
  ls__dict_set_capacity(d, capacity);
  return 0;
}


/* Walk the arena; an impossible size ends it: the rest becomes free.
 * Used chunks whose entry is not live, or does not fit its chunk, become
 * free. Returns how many entries were dropped. */
static size_t walk_repair(ls_dict_t *d, int *truncated) {
  size_t dropped = 0;
  *truncated = 0;
  for (uint32_t o = d->arena_start; o < d->arena_end; ) {
    chunk_t *c = AT(d, o);
    if (c->size < 2 || c->size > d->arena_end - o) {
      c->size = d->arena_end - o;
      c->used = 0;
      *truncated = 1;
    }
    if (c->used) {
      entry_t *e = (entry_t *)c;
      uint64_t need = sizeof(entry_t) + (uint64_t)e->klen + e->vlen;
      if (!e->live || c->size < 5 || need > (uint64_t)c->size * UNIT) {
        c->used = 0;
        e->live = 0;
        dropped++;
      }
    }
    o += c->size;
  }
  return dropped;
}


/* Rebuild the hash chains, the LRU list and the counts from the live
 * entries; of two with one key, the newer stays. Returns duplicates
 * dropped. */
static size_t relink(ls_dict_t *d) {
  memset(BUCKETS(d), 0, (size_t)d->nbuckets * 4);
  d->lru_head = d->lru_tail = 0;
  d->count = 0;
  d->bytes = 0;
  size_t dup = 0;
  uint64_t maxseq = d->seq;
  for (uint32_t o = d->arena_start; o < d->arena_end; ) {
    entry_t *e = AT(d, o);
    uint32_t size = e->c.size;
    if (e->c.used) {
      uint32_t *link = find_link(d, e->data, e->klen, e->hash);
      entry_t *other = *link ? AT(d, *link) : NULL;
      if (other && other->seq > e->seq) {
        e->live = 0;
        e->c.used = 0;
        dup++;
      } else {
        if (other) {   /* the older one goes */
          e->hnext = other->hnext;
          lru_unlink(d, other);
          other->live = 0;
          other->c.used = 0;
          d->count--;
          d->bytes -= (uint64_t)other->c.size * UNIT;
          dup++;
        } else {
          e->hnext = 0;
        }
        *link = o;
        lru_push(d, e);
        d->count++;
        d->bytes += (uint64_t)size * UNIT;
        if (e->seq > maxseq)
          maxseq = e->seq;
      }
    }
    o += size;
  }
  d->seq = maxseq;
  return dup;
}


/* The lock's owner died inside: keep what is whole, drop the rest. */
static void dict_repair(void *arg) {
  ls_dict_t *d = arg;
  int truncated;
  size_t dropped = walk_repair(d, &truncated);
  dropped += relink(d);
  rebuild_free(d);
  d->repairs++;
  ls__log("warn", "luaserve.shared: a process died holding the dictionary's "
          "lock; repaired it: %llu entries kept, %zu dropped%s",
          (unsigned long long)d->count, dropped,
          truncated ? " (the arena's end was cut off)" : "");
}


int ls__dict_lock(ls_dict_t *d) {
  return ls__shm_lock(&d->lock, dict_repair, d);
}


void ls__dict_unlock(ls_dict_t *d) {
  pthread_mutex_unlock(&d->lock);
}


/* Try the lock without waiting: repairs it if its owner died (the master
 * does this when a worker dies). 1 if it was repaired. */
int ls__dict_recover(ls_dict_t *d) {
  int r = pthread_mutex_trylock(&d->lock);
  if (r == EBUSY)
    return 0;
  if (r == EOWNERDEAD) {
    dict_repair(d);
    pthread_mutex_consistent(&d->lock);
  }
  if (r == 0 || r == EOWNERDEAD)
    pthread_mutex_unlock(&d->lock);
  return r == EOWNERDEAD;
}


const char *ls__dict_verify(ls_dict_t *d, char *buf, size_t size) {
  uint64_t bytes = 0, count = 0, nfree = 0, listed = 0;
  uint32_t prev = 0;
  for (uint32_t o = d->arena_start; o < d->arena_end; ) {
    chunk_t *c = AT(d, o);
    if (c->size < 2 || c->size > d->arena_end - o)
      return snprintf(buf, size, "chunk at %u: size %u", o, c->size), buf;
    if (c->prev != prev)
      return snprintf(buf, size, "chunk at %u: prev %u, not %u", o, c->prev,
                      prev), buf;
    if (c->used) {
      entry_t *e = (entry_t *)c;
      if (!e->live)
        return snprintf(buf, size, "chunk at %u: used, not live", o), buf;
      if (*link_of(d, e) != o)
        return snprintf(buf, size, "entry at %u: not in its chain", o), buf;
      bytes += (uint64_t)c->size * UNIT;
      count++;
    } else {
      nfree++;
      chunk_t *n = next_chunk(d, o);
      if (n && !n->used)
        return snprintf(buf, size, "free chunks at %u not merged", o), buf;
    }
    prev = c->size;
    o += c->size;
  }
  for (unsigned c = 0; c < NCLASSES; c++)
    for (uint32_t o = d->free_head[c]; o; o = ((chunk_t *)AT(d, o))->fnext) {
      chunk_t *ch = AT(d, o);
      if (ch->used || size_class(ch->size) != c)
        return snprintf(buf, size, "free list %u holds chunk %u", c, o), buf;
      listed++;
    }
  uint64_t in_lru = 0;
  for (uint32_t o = d->lru_head; o; o = ((entry_t *)AT(d, o))->lnext)
    in_lru++;
  if (bytes != d->bytes || count != d->count || listed != nfree ||
      in_lru != count)
    return snprintf(buf, size, "counts: bytes %llu/%llu, entries %llu/%llu, "
                    "free %llu/%llu, lru %llu", (unsigned long long)bytes,
                    (unsigned long long)d->bytes, (unsigned long long)count,
                    (unsigned long long)d->count, (unsigned long long)listed,
                    (unsigned long long)nfree, (unsigned long long)in_lru),
           buf;
  return NULL;
}
