/* static.c: files off the loop. file_open opens and stats a file on
 * libuv's thread pool (beneath a root folder with openat2's
 * RESOLVE_BENEATH: no `..`, absolute path or symlink leaves it) and reads
 * small files whole there, or only checks that a file it read before is
 * unchanged (the open-file cache's revalidation, luaserve.filecache:
 * through the same open); respond_file sends a big one on a request's
 * connection: sendfile(2) on the thread pool over plain TCP, waiting for
 * the socket with a poll handle when it is full; over TLS, bounded chunks
 * read on the pool and written through the stream with back-pressure.
 *
 * Why not uv_fs_sendfile: libuv 1.44 (Debian 12) tries copy_file_range
 * first, which fails on a socket with EINVAL, and then falls back to a
 * read/write loop that poll()s the socket: a slow client would hold a pool
 * thread for as long as it takes. Here a sendfile that would block
 * returns EAGAIN at once and the loop waits for the socket instead.
 *
 * The body starts only once everything queued before it on the connection
 * is written, and the request stays Lua's until the last byte is sent, so
 * a pipelined answer waits for it. A client that leaves mid-file detaches
 * the send: the work in flight finishes alone and frees everything.
 * Loop thread, except the work functions (pool threads, no Lua). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <linux/openat2.h>

#include "internal.h"

#define LS_FILE_MT "luaserve.file"
/* Files up to this size are read whole on the pool (one trip) and sent
 * from memory, unless file_open is told another bound. */
#define LS_SMALL_FILE (64 * 1024)
/* A file changed less than this many seconds before it was read is
 * "racy" (git's word): a change in the same timestamp tick after the read
 * would leave its stat as it was, so it gets no stamp and is read again at
 * the next check. Timestamps tick in jiffies; two seconds leave room. */
#define LS_RACY_SECONDS 2
/* TLS: the chunk read and written per step. */
#define LS_FILE_CHUNK (64 * 1024)

/* What identifies a file's content without reading it: compared whole
 * (memcmp), so all fields are int64_t (no padding). */
typedef struct {
  int64_t dev, ino, size;
  int64_t mtime_sec, mtime_nsec, ctime_sec, ctime_nsec;
} file_stamp_t;

/* An open file Lua holds (a userdata points at it). */
typedef struct {
  int fd;                   /* -1 once closed or handed to a send */
} ls_file_t;

/* One file_open on the pool. */
typedef struct {
  uv_work_t work;
  ls_runtime_t *rt;
  int target_ref;
  char *root;               /* NULL: path is used as it is */
  char *path;
  int err;                  /* 0 or a negative errno */
  int fd;
  struct stat st;
  size_t small;             /* read whole up to this size */
  file_stamp_t known;       /* the stamp of the copy Lua holds */
  int has_known;
  int unchanged;            /* it matches known: nothing was read */
  int stamped;              /* stamp is set: not racy */
  file_stamp_t stamp;
  char *content;            /* a small file, read whole */
  size_t content_len;
} open_req_t;

/* A file being sent on a connection (ls_conn_t.send). */
struct ls_send_s {
  uv_work_t work;
  uv_poll_t poll;           /* the socket (a dup), while it is full */
  ls_defer_t defer;         /* start once a cork is gone */
  ls_conn_t *c;             /* NULL once detached (the client left) */
  ls_runtime_t *rt;
  int target_ref;           /* resolved when done */
  int fd;                   /* the file */
  int sock;                 /* a dup of the socket: never another's fd */
  int64_t off, left;
  int busy;                 /* the work is on the pool */
  int polling;
  int poll_open;
  int tls;                  /* chunks through the stream */
  int err;                  /* the last work's error, 0, or UV_EAGAIN */
  char *chunk;              /* TLS: the chunk read */
  size_t chunk_len;
};


/* ---- opening, on the pool ----------------------------------------------- */

/* openat2 beneath dirfd, or -1 with errno. */
static int open_beneath(int dirfd, const char *path) {
  struct open_how how;
  memset(&how, 0, sizeof(how));
  how.flags = O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS;
  return (int)syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
}


/* Kernels without openat2 (or filters that refuse it): resolve the real
 * path and check it is inside the root's. */
static int open_checked(const char *root, const char *path) {
  char rroot[PATH_MAX], full[PATH_MAX], rfull[PATH_MAX];
  if (realpath(root, rroot) == NULL)
    return -1;
  size_t n = (size_t)snprintf(full, sizeof(full), "%s/%s", rroot, path);
  if (n >= sizeof(full)) {
    errno = ENAMETOOLONG;
    return -1;
  }
  if (realpath(full, rfull) == NULL)
    return -1;
  size_t rl = strlen(rroot);
  if (strncmp(rfull, rroot, rl) != 0 || (rfull[rl] != '/' && rfull[rl] != '\0' &&
                                         strcmp(rroot, "/") != 0)) {
    errno = EXDEV;
    return -1;
  }
  return open(rfull, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
}


static void stamp_of(const struct stat *st, file_stamp_t *s) {
  memset(s, 0, sizeof(*s));
  s->dev = (int64_t)st->st_dev;
  s->ino = (int64_t)st->st_ino;
  s->size = (int64_t)st->st_size;
  s->mtime_sec = (int64_t)st->st_mtim.tv_sec;
  s->mtime_nsec = (int64_t)st->st_mtim.tv_nsec;
  s->ctime_sec = (int64_t)st->st_ctim.tv_sec;
  s->ctime_nsec = (int64_t)st->st_ctim.tv_nsec;
}


/* Was st changed so recently that a later change could keep its stat? */
static int is_racy(const struct stat *st) {
  struct timespec now;
  if (clock_gettime(CLOCK_REALTIME, &now) != 0)
    return 1;
  time_t changed = st->st_mtim.tv_sec > st->st_ctim.tv_sec ? st->st_mtim.tv_sec
                                                           : st->st_ctim.tv_sec;
  return changed > now.tv_sec - LS_RACY_SECONDS;
}


static void open_work(uv_work_t *w) {
  open_req_t *r = w->data;
  int fd;
  r->fd = -1;
  if (r->root) {
    int dirfd = open(r->root, O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0) {
      r->err = -errno;
      return;
    }
    fd = open_beneath(dirfd, r->path);
    if (fd < 0 && (errno == ENOSYS || errno == EPERM))
      fd = open_checked(r->root, r->path);
    close(dirfd);
  } else {
    fd = open(r->path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
  }
  if (fd < 0 || fstat(fd, &r->st) != 0) {
    r->err = -errno;
    if (fd >= 0)
      close(fd);
    return;
  }
  if (!S_ISREG(r->st.st_mode)) {   /* a folder (its index is Lua's), a fifo */
    close(fd);
    return;
  }
  stamp_of(&r->st, &r->stamp);
  r->stamped = !is_racy(&r->st);
  if (r->has_known && r->stamped && memcmp(&r->stamp, &r->known, sizeof(r->known)) == 0) {
    r->unchanged = 1;   /* the copy Lua holds is this file's content */
    close(fd);
    return;
  }
  if ((uint64_t)r->st.st_size <= r->small) {
    /* Read it whole now: one trip for a small file. It may have changed
     * since the fstat: what was read is what is sent. */
    r->content = malloc((size_t)r->st.st_size + 1);
    size_t got = 0;
    while (r->content && got <= (size_t)r->st.st_size) {
      ssize_t n = pread(fd, r->content + got, (size_t)r->st.st_size + 1 - got,
                        (off_t)got);
      if (n < 0 && errno == EINTR)
        continue;
      if (n < 0) {
        r->err = -errno;
        break;
      }
      if (n == 0)
        break;
      got += (size_t)n;
    }
    if (r->content == NULL)
      r->err = UV_ENOMEM;
    r->content_len = got > (size_t)r->st.st_size ? (size_t)r->st.st_size : got;
    close(fd);
    return;
  }
  r->fd = fd;
}


static void open_req_free(open_req_t *r) {
  if (r->fd >= 0)
    close(r->fd);
  free(r->content);
  free(r->root);
  free(r->path);
  free(r);
}


/* Back on the loop: resolve the target with kind, size, mtime, the
 * content (a string), an open file (userdata), true (unchanged) or false,
 * and the stamp (a string, or nil); or nil, errno name. */
static void open_after(uv_work_t *w, int status) {
  open_req_t *r = w->data;
  ls_runtime_t *rt = r->rt;
  lua_State *L = rt->L;
  if (rt->closing || L == NULL) {   /* the exit path: Lua is gone */
    open_req_free(r);
    return;
  }
  int err = status < 0 ? status : r->err;
  if (err < 0) {
    lua_pushnil(L);
    lua_pushstring(L, uv_err_name(err));
    int ref = r->target_ref;
    open_req_free(r);
    ls__resolve(rt, ref, 2);
    return;
  }
  int kind = S_ISREG(r->st.st_mode) ? 1 : S_ISDIR(r->st.st_mode) ? 2 : 3;
  lua_pushstring(L, kind == 1 ? "file" : kind == 2 ? "dir" : "other");
  lua_pushnumber(L, kind == 1 && r->content ? (double)r->content_len
                                            : (double)r->st.st_size);
  lua_pushnumber(L, (double)r->st.st_mtim.tv_sec);
  if (r->unchanged) {
    lua_pushboolean(L, 1);
  } else if (r->content) {
    lua_pushlstring(L, r->content, r->content_len);
  } else if (r->fd >= 0) {
    ls_file_t *f = lua_newuserdata(L, sizeof(*f));
    f->fd = r->fd;
    r->fd = -1;
    luaL_getmetatable(L, LS_FILE_MT);
    lua_setmetatable(L, -2);
  } else {
    lua_pushboolean(L, 0);
  }
  /* A stamp only for what was read whole (or is unchanged): the content
   * is what a later check compares against. */
  if (kind == 1 && r->stamped && (r->unchanged || r->content))
    lua_pushlstring(L, (const char *)&r->stamp, sizeof(r->stamp));
  else
    lua_pushnil(L);
  int ref = r->target_ref;
  open_req_free(r);
  ls__resolve(rt, ref, 5);
}


/* file_open(root|nil, path, target[, small[, known]]): open path
 * (beneath root when given) on the thread pool. target gets kind
 * ("file", "dir", "other"), size, mtime (seconds), then the content (a
 * file of up to small bytes, default 64 KB), an open file (userdata:
 * respond_file sends it), true (a file whose stamp is known: the copy
 * read before is still its content; nothing was read) or false; then the
 * file's stamp (an opaque string: pass it back as known; nil for a file
 * changed within the last two seconds, which is read again next time);
 * or nil and the errno's name ("ENOENT", "EXDEV" for a path that leaves
 * the root, ...). */
int ls__lua_file_open(lua_State *L) {
  ls_runtime_t *rt = LS__RT(L);
  const char *root = luaL_optstring(L, 1, NULL);
  const char *path = luaL_checkstring(L, 2);
  luaL_checkany(L, 3);
  lua_Number small = luaL_optnumber(L, 4, LS_SMALL_FILE);
  size_t klen = 0;
  const char *known = luaL_optlstring(L, 5, NULL, &klen);
  if (small < 0 || small > (lua_Number)(1u << 30))
    return luaL_argerror(L, 4, "expected a size from 0 to 1 GB");
  if (known && klen != sizeof(file_stamp_t))
    return luaL_argerror(L, 5, "not a stamp file_open gave");
  open_req_t *r = calloc(1, sizeof(*r));
  if (r == NULL)
    return ls__push_error(L, UV_ENOMEM);
  r->rt = rt;
  r->fd = -1;
  r->small = (size_t)small;
  if (known) {
    memcpy(&r->known, known, sizeof(r->known));
    r->has_known = 1;
  }
  r->root = root ? strdup(root) : NULL;
  r->path = strdup(path);
  if (r->path == NULL || (root && r->root == NULL)) {
    open_req_free(r);
    return ls__push_error(L, UV_ENOMEM);
  }
  r->work.data = r;
  int err = uv_queue_work(rt->loop, &r->work, open_work, open_after);
  if (err) {
    open_req_free(r);
    return ls__push_error(L, err);
  }
  lua_pushvalue(L, 3);
  r->target_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushboolean(L, 1);
  return 1;
}


/* ---- listing a folder, on the pool --------------------------------------- */

typedef struct {
  char *name;
  int kind;                 /* 1 file, 2 folder, 3 symlink, 4 other */
  int64_t size, mtime;
} dir_entry_t;

/* One dir_list on the pool. */
typedef struct {
  uv_work_t work;
  ls_runtime_t *rt;
  int target_ref;
  char *root;
  char *path;
  size_t max;               /* entries kept at most */
  int err;                  /* 0 or a negative errno */
  int truncated;            /* more than max */
  dir_entry_t *entries;
  size_t n, cap;
} dir_req_t;


static void dir_req_free(dir_req_t *r) {
  for (size_t i = 0; i < r->n; i++)
    free(r->entries[i].name);
  free(r->entries);
  free(r->root);
  free(r->path);
  free(r);
}


/* The folder is opened beneath the root as file_open opens a file; its
 * entries are stat'ed without following symlinks (a link's target, which
 * may lie outside the root, is not looked at: serving it resolves it
 * beneath the root, or answers 404). Names starting with "." are left
 * out. */
static void dir_work(uv_work_t *w) {
  dir_req_t *r = w->data;
  int rootfd = open(r->root, O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (rootfd < 0) {
    r->err = -errno;
    return;
  }
  int fd = open_beneath(rootfd, r->path);
  if (fd < 0 && (errno == ENOSYS || errno == EPERM))
    fd = open_checked(r->root, r->path);
  close(rootfd);
  if (fd < 0) {
    r->err = -errno;
    return;
  }
  DIR *d = fdopendir(fd);
  if (d == NULL) {
    r->err = -errno;
    close(fd);
    return;
  }
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.')
      continue;   /* ".", "..", and hidden files */
    if (r->n == r->max) {
      r->truncated = 1;
      break;
    }
    if (r->n == r->cap) {
      size_t cap = r->cap ? r->cap * 2 : 64;
      dir_entry_t *grown = realloc(r->entries, cap * sizeof(*grown));
      if (grown == NULL) {
        r->err = UV_ENOMEM;
        break;
      }
      r->entries = grown;
      r->cap = cap;
    }
    struct stat st;
    dir_entry_t *de = &r->entries[r->n];
    memset(de, 0, sizeof(*de));
    if (fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
      de->kind = S_ISREG(st.st_mode) ? 1 : S_ISDIR(st.st_mode) ? 2
               : S_ISLNK(st.st_mode) ? 3 : 4;
      de->size = (int64_t)st.st_size;
      de->mtime = (int64_t)st.st_mtim.tv_sec;
    } else {
      continue;   /* gone meanwhile */
    }
    de->name = strdup(e->d_name);
    if (de->name == NULL) {
      r->err = UV_ENOMEM;
      break;
    }
    r->n++;
  }
  closedir(d);
}


/* Back on the loop: the target gets a list of { name, kind, size, mtime }
 * (kind "file", "dir", "link" or "other") and whether it was cut at max;
 * or nil, errno name ("ENOTDIR" for a file). */
static void dir_after(uv_work_t *w, int status) {
  dir_req_t *r = w->data;
  ls_runtime_t *rt = r->rt;
  lua_State *L = rt->L;
  if (rt->closing || L == NULL) {
    dir_req_free(r);
    return;
  }
  int ref = r->target_ref;
  int err = status < 0 ? status : r->err;
  if (err < 0) {
    dir_req_free(r);
    lua_pushnil(L);
    lua_pushstring(L, uv_err_name(err));
    ls__resolve(rt, ref, 2);
    return;
  }
  static const char *const kinds[] = {"other", "file", "dir", "link", "other"};
  lua_createtable(L, (int)r->n, 0);
  for (size_t i = 0; i < r->n; i++) {
    dir_entry_t *de = &r->entries[i];
    lua_createtable(L, 0, 4);
    lua_pushstring(L, de->name);
    lua_setfield(L, -2, "name");
    lua_pushstring(L, kinds[de->kind]);
    lua_setfield(L, -2, "kind");
    lua_pushnumber(L, (double)de->size);
    lua_setfield(L, -2, "size");
    lua_pushnumber(L, (double)de->mtime);
    lua_setfield(L, -2, "mtime");
    lua_rawseti(L, -2, (int)i + 1);
  }
  lua_pushboolean(L, r->truncated);
  dir_req_free(r);
  ls__resolve(rt, ref, 2);
}


/* dir_list(root, path, target, max): the entries of the folder at path
 * beneath root, read on the thread pool (see dir_work and dir_after). */
int ls__lua_dir_list(lua_State *L) {
  ls_runtime_t *rt = LS__RT(L);
  const char *root = luaL_checkstring(L, 1);
  const char *path = luaL_checkstring(L, 2);
  luaL_checkany(L, 3);
  lua_Number max = luaL_checknumber(L, 4);
  if (max < 1 || max > 1e6)
    return luaL_argerror(L, 4, "expected 1 to 1,000,000 entries");
  dir_req_t *r = calloc(1, sizeof(*r));
  if (r == NULL)
    return ls__push_error(L, UV_ENOMEM);
  r->rt = rt;
  r->max = (size_t)max;
  r->root = strdup(root);
  r->path = strdup(path);
  if (r->root == NULL || r->path == NULL) {
    dir_req_free(r);
    return ls__push_error(L, UV_ENOMEM);
  }
  r->work.data = r;
  int err = uv_queue_work(rt->loop, &r->work, dir_work, dir_after);
  if (err) {
    dir_req_free(r);
    return ls__push_error(L, err);
  }
  lua_pushvalue(L, 3);
  r->target_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pushboolean(L, 1);
  return 1;
}


static int file_gc(lua_State *L) {
  ls_file_t *f = luaL_checkudata(L, 1, LS_FILE_MT);
  if (f->fd >= 0)
    close(f->fd);   /* a read-only regular file: close does not wait */
  f->fd = -1;
  return 0;
}


static const luaL_Reg file_methods[] = {
  {"close", file_gc},
  {NULL, NULL},
};


void ls__static_open(lua_State *L) {
  ls__new_class(L, LS_FILE_MT, file_methods, file_gc);
}


/* ---- sending, on a connection ------------------------------------------- */

static void send_pump(ls_send_t *s);


static void send_on_poll_close(uv_handle_t *h) {
  free(h->data);
}


/* Free s: the work is done and nothing else points at it. */
static void send_free(ls_send_t *s) {
  if (s->fd >= 0)
    close(s->fd);
  if (s->sock >= 0)
    close(s->sock);
  s->fd = s->sock = -1;
  free(s->chunk);
  s->chunk = NULL;
  if (s->poll_open)
    uv_close((uv_handle_t *)&s->poll, send_on_poll_close);
  else
    free(s);
}


/* The send is over: the connection goes on with the next request (ok) or
 * is closed; Lua's target hears true, or nil, "closed". From a libuv
 * callback only (never inside a Lua call). */
static void send_finish(ls_send_t *s, int ok) {
  ls_conn_t *c = s->c;
  ls_runtime_t *rt = s->rt;
  int ref = s->target_ref;
  s->target_ref = LUA_NOREF;
  s->c = NULL;
  c->send = NULL;
  ls__defer_cancel(rt, &s->defer);
  send_free(s);
  ls__stream_deadline(&c->stream, 0);
  if (!ok && c->state != LS_CONN_CLOSING)
    ls__conn_close(c);
  if (c->lua_holds > 0)
    ls__conn_request_done(c);
  if (ok) {
    lua_pushboolean(rt->L, 1);
    ls__resolve(rt, ref, 1);
  } else {
    lua_pushnil(rt->L);
    lua_pushliteral(rt->L, "closed");
    ls__resolve(rt, ref, 2);
  }
}


void ls__send_detach(ls_conn_t *c) {
  ls_send_t *s = c->send;
  c->send = NULL;
  s->c = NULL;
  ls__defer_cancel(s->rt, &s->defer);
  if (s->target_ref != LUA_NOREF && s->rt->L)
    luaL_unref(s->rt->L, LUA_REGISTRYINDEX, s->target_ref);   /* Lua hears the abort */
  s->target_ref = LUA_NOREF;
  if (s->polling)
    uv_poll_stop(&s->poll);
  s->polling = 0;
  if (!s->busy)
    send_free(s);   /* else the work's callback frees it */
}


static void send_work(uv_work_t *w) {
  ls_send_t *s = w->data;
  s->err = 0;
  if (s->tls) {
    size_t want = s->left < LS_FILE_CHUNK ? (size_t)s->left : LS_FILE_CHUNK;
    ssize_t n;
    do
      n = pread(s->fd, s->chunk, want, (off_t)s->off);
    while (n < 0 && errno == EINTR);
    if (n < 0)
      s->err = -errno;
    else if (n == 0)
      s->err = UV_EOF;   /* the file shrank: the promised length cannot be met */
    s->chunk_len = n > 0 ? (size_t)n : 0;
    return;
  }
  while (s->left > 0) {
    off_t off = (off_t)s->off;
    size_t want = s->left > (1 << 30) ? (1 << 30) : (size_t)s->left;
    ssize_t n = sendfile(s->sock, s->fd, &off, want);
    if (n > 0) {
      s->off += n;
      s->left -= n;
    } else if (n == 0) {
      s->err = UV_EOF;
      return;
    } else if (errno != EINTR) {
      s->err = errno == EAGAIN ? UV_EAGAIN : -errno;
      return;
    }
  }
}


static void send_on_writable(uv_poll_t *p, int status, int events) {
  ls_send_t *s = p->data;
  uv_poll_stop(p);
  s->polling = 0;
  if (s->c == NULL)
    return;
  ls__stream_deadline(&s->c->stream, 0);
  if (status < 0)
    send_finish(s, 0);
  else
    send_pump(s);
}


/* The socket is full: wait until it takes more, for at most the send
 * timeout (the connection's deadline: it closes when it passes). */
static void send_wait_writable(ls_send_t *s) {
  ls_conn_t *c = s->c;
  if (!s->poll_open) {
    if (uv_poll_init_socket(s->rt->loop, &s->poll, s->sock) != 0) {
      send_finish(s, 0);
      return;
    }
    s->poll.data = s;
    s->poll_open = 1;
  }
  if (uv_poll_start(&s->poll, UV_WRITABLE, send_on_writable) != 0) {
    send_finish(s, 0);
    return;
  }
  s->polling = 1;
  if (c->server->lim.send_timeout)
    ls__stream_deadline(&c->stream, c->server->lim.send_timeout);
}


static void send_after(uv_work_t *w, int status) {
  ls_send_t *s = w->data;
  s->busy = 0;
  if (s->c == NULL) {   /* detached meanwhile: the client left */
    send_free(s);
    return;
  }
  if (status < 0 || (s->err < 0 && s->err != UV_EAGAIN)) {
    send_finish(s, 0);
    return;
  }
  if (s->tls) {
    uv_buf_t b = uv_buf_init(s->chunk, (unsigned)s->chunk_len);
    s->off += (int64_t)s->chunk_len;
    s->left -= (int64_t)s->chunk_len;
    if (ls__conn_write(s->c, &b, 1) != 0) {
      send_finish(s, 0);
      return;
    }
  }
  if (s->left == 0) {
    send_finish(s, 1);
    return;
  }
  if (s->err == UV_EAGAIN)
    send_wait_writable(s);
  else
    send_pump(s);
}


static void send_on_defer(ls_defer_t *d) {
  send_pump((ls_send_t *)((char *)d - offsetof(ls_send_t, defer)));
}


/* Move the send along: wait while the connection's queue holds what came
 * before (the head too), else put the next step on the pool. */
static void send_pump(ls_send_t *s) {
  ls_conn_t *c = s->c;
  if (c == NULL || s->busy || s->polling)
    return;
  if (c->state == LS_CONN_CLOSING) {
    send_finish(s, 0);
    return;
  }
  if (ls__stream_queued(&c->stream) > 0) {
    if (!ls__stream_blocked(&c->stream))   /* corked: soon written */
      ls__defer(s->rt, &s->defer, send_on_defer);
    return;   /* on_drain calls again */
  }
  int err = uv_queue_work(s->rt->loop, &s->work, send_work, send_after);
  if (err) {
    send_finish(s, 0);
    return;
  }
  s->busy = 1;
}


void ls__send_on_drain(ls_conn_t *c) {
  send_pump(c->send);
}


/* The answer cannot go on (a write failed, no memory): close the file and
 * the connection, end the request; push nil, "closed". */
static int give_up(lua_State *L, ls_conn_t *c, int fd) {
  close(fd);
  ls__conn_close(c);
  ls__conn_request_done(c);
  lua_pushnil(L);
  lua_pushliteral(L, "closed");
  return 2;
}


/* respond_file(handle, status, content_type, headers|nil, file, offset,
 * length, target): answer with length bytes of the open file from
 * offset (Content-Length: length; HEAD: the head only). true when it is
 * all written or queued now (the request is over); false when the body
 * goes on: target then gets true once it is sent, and the request stays
 * open until then (nothing pipelined is answered meanwhile); nil,
 * "closed" when the client is gone. The file is taken over either way. */
int ls__lua_respond_file(lua_State *L) {
  ls_conn_t *c = ls__conn_lookup(L, 1);
  int status = (int)luaL_checkinteger(L, 2);
  size_t ctlen = 0;
  const char *ctype = luaL_optlstring(L, 3, NULL, &ctlen);
  int headers = lua_istable(L, 4) ? 4 : 0;
  ls_file_t *f = luaL_checkudata(L, 5, LS_FILE_MT);
  double offd = luaL_checknumber(L, 6), lend = luaL_checknumber(L, 7);
  luaL_checkany(L, 8);
  if (f->fd < 0)
    return luaL_error(L, "respond_file: the file is closed");
  if (offd < 0 || lend < 0)
    return luaL_error(L, "respond_file: bad range");
  if (c == NULL || c->lua_holds == 0 || c->state == LS_CONN_CLOSING ||
      c->streaming || c->send) {
    close(f->fd);
    f->fd = -1;
    if (c && c->lua_holds > 0 && c->state == LS_CONN_CLOSING)
      ls__conn_request_done(c);
    lua_pushnil(L);
    lua_pushliteral(L, "closed");
    return 2;
  }
  int err = ls__http_format_head(L, c, status, ctype, ctlen, (size_t)lend,
                                 headers);   /* raises on a bad header: the
                                                  file's __gc closes the fd */
  int fd = f->fd;   /* from here the send owns it */
  f->fd = -1;
  uv_buf_t b = uv_buf_init(c->out.data, (unsigned)c->out.len);
  if (err == 0)
    err = ls__conn_write(c, &b, 1);
  c->out.len = 0;
  if (err)
    return give_up(L, c, fd);
  if (c->is_head || lend == 0 || status == 304 || status == 204) {
    close(fd);
    ls__conn_request_done(c);
    lua_pushboolean(L, 1);
    return 1;
  }
  ls_send_t *s = calloc(1, sizeof(*s));
  int sock = -1;
  if (s && uv_fileno((uv_handle_t *)&c->stream.tcp, &sock) == 0)
    sock = dup(sock);
  else
    sock = -1;
  if (s && c->stream.tls)
    s->chunk = malloc(LS_FILE_CHUNK);
  if (s == NULL || sock < 0 || (c->stream.tls && s->chunk == NULL)) {
    if (sock >= 0)
      close(sock);
    if (s)
      free(s->chunk);
    free(s);
    return give_up(L, c, fd);
  }
  s->c = c;
  s->rt = c->rt;
  s->fd = fd;
  s->sock = sock;
  s->off = (int64_t)offd;
  s->left = (int64_t)lend;
  s->tls = c->stream.tls != NULL;
  s->work.data = s;
  lua_pushvalue(L, 8);
  s->target_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  c->send = s;
  /* Never from inside this Lua call: the pump may finish (and resolve). */
  ls__defer(s->rt, &s->defer, send_on_defer);
  lua_pushboolean(L, 0);
  return 1;
}
