/* fs.c: file operations on libuv's thread pool, for luaserve.fs (upload
 * temp files, files read or written by handlers): the loop never waits for
 * a disk. Each call takes a target that is resolved from the loop with the
 * result, or nil, message, code ("ENOENT"). A request owns copies of what
 * it needs (the bytes to write, the path), so it can finish after Lua has
 * moved on or closed: at exit a file it opened is closed and a temp file it
 * made is removed, without entering Lua. Loop thread of its runtime. */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* One read returns at most this many bytes. */
#define LS_FS_READ_MAX (4 * 1024 * 1024)

enum { FS_OPEN, FS_MKSTEMP, FS_WRITE, FS_READ, FS_CLOSE, FS_UNLINK, FS_RENAME,
       FS_COPY, FS_STAT };

typedef struct {
  uv_fs_t req;
  ls_runtime_t *rt;
  int op;                   /* FS_* */
  int target_ref;           /* LUA_NOREF: nobody waits for the result */
  uv_file fd;               /* write, read */
  char *buf;                /* write: a copy of the data; read: the bytes */
  size_t len, done;         /* write: bytes, bytes written so far */
  int64_t offset;           /* write, read: -1 for the file position */
} fs_req_t;


static fs_req_t *fs_req_new(lua_State *L, int op, int target) {
  fs_req_t *r = calloc(1, sizeof(*r));
  if (r == NULL)
    luaL_error(L, "fs: out of memory");
  r->rt = LS__RT(L);
  r->op = op;
  r->req.data = r;
  r->offset = -1;
  r->target_ref = LUA_NOREF;
  if (target && !lua_isnoneornil(L, target)) {
    lua_pushvalue(L, target);
    r->target_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  return r;
}


static void fs_req_free(fs_req_t *r) {
  uv_fs_req_cleanup(&r->req);
  free(r->buf);
  free(r);
}


/* A call that libuv refused at once: nil, message, code (the request is
 * freed, its target released). */
static int fs_refused(lua_State *L, fs_req_t *r, int err) {
  if (r->target_ref != LUA_NOREF)
    luaL_unref(L, LUA_REGISTRYINDEX, r->target_ref);
  fs_req_free(r);
  lua_pushnil(L);
  lua_pushstring(L, uv_strerror(err));
  lua_pushstring(L, uv_err_name(err));
  return 3;
}


/* The call went to the thread pool: true (the target hears later). */
static int fs_started(lua_State *L, fs_req_t *r, int err) {
  if (err < 0)
    return fs_refused(L, r, err);
  lua_pushboolean(L, 1);
  return 1;
}


/* At exit nothing enters Lua: what the request opened is closed, a temp
 * file it made is removed (synchronously: the loop is only finishing). */
static void fs_orphan(fs_req_t *r) {
  ssize_t res = r->req.result;
  if ((r->op == FS_OPEN || r->op == FS_MKSTEMP) && res >= 0) {
    uv_fs_t tmp;
    if (r->op == FS_MKSTEMP) {
      uv_fs_unlink(r->rt->loop, &tmp, r->req.path, NULL);
      uv_fs_req_cleanup(&tmp);
    }
    uv_fs_close(r->rt->loop, &tmp, (uv_file)res, NULL);
    uv_fs_req_cleanup(&tmp);
  }
  fs_req_free(r);
}


static void fs_on_done(uv_fs_t *req);


/* Push the result of a finished request; returns how many values. */
static int fs_push_result(lua_State *L, fs_req_t *r) {
  ssize_t res = r->req.result;
  if (res < 0) {
    lua_pushnil(L);
    lua_pushstring(L, uv_strerror((int)res));
    lua_pushstring(L, uv_err_name((int)res));
    return 3;
  }
  switch (r->op) {
  case FS_OPEN:
    lua_pushinteger(L, (lua_Integer)res);
    return 1;
  case FS_MKSTEMP:
    lua_pushinteger(L, (lua_Integer)res);
    lua_pushstring(L, r->req.path);
    return 2;
  case FS_WRITE:
    lua_pushnumber(L, (lua_Number)r->done);
    return 1;
  case FS_READ:
    lua_pushlstring(L, r->buf, (size_t)res);
    return 1;
  case FS_STAT: {
    const uv_stat_t *st = &r->req.statbuf;
    lua_createtable(L, 0, 4);
    lua_pushnumber(L, (lua_Number)st->st_size);
    lua_setfield(L, -2, "size");
    lua_pushnumber(L, (lua_Number)st->st_mtim.tv_sec +
                      (lua_Number)st->st_mtim.tv_nsec / 1e9);
    lua_setfield(L, -2, "mtime");
    lua_pushinteger(L, (lua_Integer)(st->st_mode & 07777));
    lua_setfield(L, -2, "mode");
    const char *type = "other";
    if ((st->st_mode & S_IFMT) == S_IFREG) type = "file";
    else if ((st->st_mode & S_IFMT) == S_IFDIR) type = "directory";
    lua_pushstring(L, type);
    lua_setfield(L, -2, "type");
    return 1;
  }
  default:
    lua_pushboolean(L, 1);
    return 1;
  }
}


/* Write what is left of r->buf (a write may be short: disk full, a
 * signal); 0 or a libuv error. */
static int fs_write_rest(fs_req_t *r) {
  uv_fs_req_cleanup(&r->req);
  uv_buf_t b = uv_buf_init(r->buf + r->done, (unsigned)(r->len - r->done));
  int64_t off = r->offset < 0 ? -1 : r->offset + (int64_t)r->done;
  return uv_fs_write(r->rt->loop, &r->req, r->fd, &b, 1, off, fs_on_done);
}


static void fs_on_done(uv_fs_t *req) {
  fs_req_t *r = req->data;
  ls_runtime_t *rt = r->rt;
  if (r->op == FS_WRITE && req->result > 0) {
    r->done += (size_t)req->result;
    if (r->done < r->len && !rt->closing) {
      int err = fs_write_rest(r);
      if (err == 0)
        return;
      r->req.result = err;
    }
  }
  if (r->op == FS_WRITE && req->result >= 0 && r->done < r->len)
    req->result = UV_EIO;   /* the disk took nothing more */
  if (rt->closing) {
    fs_orphan(r);
    return;
  }
  if (r->target_ref == LUA_NOREF) {
    if ((r->op == FS_OPEN || r->op == FS_MKSTEMP) && req->result >= 0)
      fs_orphan(r);   /* nobody takes the descriptor */
    else
      fs_req_free(r);
    return;
  }
  int n = fs_push_result(rt->L, r);
  int ref = r->target_ref;
  fs_req_free(r);
  ls__resolve(rt, ref, n);
}


/* The flags of a mode string: r, r+, w, wx, a. */
static int open_flags(lua_State *L, const char *mode) {
  if (strcmp(mode, "r") == 0) return O_RDONLY;
  if (strcmp(mode, "r+") == 0) return O_RDWR;
  if (strcmp(mode, "w") == 0) return O_WRONLY | O_CREAT | O_TRUNC;
  if (strcmp(mode, "wx") == 0) return O_WRONLY | O_CREAT | O_EXCL;
  if (strcmp(mode, "a") == 0) return O_WRONLY | O_CREAT | O_APPEND;
  return luaL_error(L, "fs.open: mode must be r, r+, w, wx or a, got '%s'",
                    mode);
}


/* fs_open(path, mode, perm, target): target gets the descriptor. */
int ls__lua_fs_open(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int flags = open_flags(L, luaL_checkstring(L, 2));
  int perm = (int)luaL_optinteger(L, 3, 0644);
  luaL_checkany(L, 4);
  fs_req_t *r = fs_req_new(L, FS_OPEN, 4);
  return fs_started(L, r, uv_fs_open(r->rt->loop, &r->req, path, flags, perm,
                                     fs_on_done));
}


/* fs_mkstemp(template, target): a new file (mode 0600) named by the
 * template with its last six X replaced; target gets fd, path. */
int ls__lua_fs_mkstemp(lua_State *L) {
  size_t len;
  const char *tpl = luaL_checklstring(L, 1, &len);
  if (len < 6 || strcmp(tpl + len - 6, "XXXXXX") != 0)
    return luaL_argerror(L, 1, "the template must end in XXXXXX");
  luaL_checkany(L, 2);
  fs_req_t *r = fs_req_new(L, FS_MKSTEMP, 2);
  return fs_started(L, r, uv_fs_mkstemp(r->rt->loop, &r->req, tpl,
                                        fs_on_done));
}


/* fs_write(fd, data, offset|-1, target): target gets the bytes written
 * (all of them, or an error). */
int ls__lua_fs_write(lua_State *L) {
  uv_file fd = (uv_file)luaL_checkinteger(L, 1);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  double off = luaL_optnumber(L, 3, -1);
  luaL_checkany(L, 4);
  fs_req_t *r = fs_req_new(L, FS_WRITE, 4);
  /* A copy: the thread writes it while Lua may collect the string (or the
   * state close, at exit). */
  r->buf = malloc(len ? len : 1);
  if (r->buf == NULL)
    return fs_refused(L, r, UV_ENOMEM);
  memcpy(r->buf, data, len);
  r->len = len;
  r->fd = fd;
  r->offset = off < 0 ? -1 : (int64_t)off;
  if (len == 0) {   /* nothing to write: resolve from the loop all the same */
    uv_buf_t b = uv_buf_init(r->buf, 0);
    return fs_started(L, r, uv_fs_write(r->rt->loop, &r->req, fd, &b, 1,
                                        r->offset, fs_on_done));
  }
  return fs_started(L, r, fs_write_rest(r));
}


/* fs_read(fd, n, offset|-1, target): target gets up to n bytes ("" at the
 * end of the file). */
int ls__lua_fs_read(lua_State *L) {
  uv_file fd = (uv_file)luaL_checkinteger(L, 1);
  lua_Integer n = luaL_checkinteger(L, 2);
  double off = luaL_optnumber(L, 3, -1);
  luaL_checkany(L, 4);
  if (n < 0 || n > LS_FS_READ_MAX)
    return luaL_argerror(L, 2, "between 0 and 4 MiB");
  fs_req_t *r = fs_req_new(L, FS_READ, 4);
  r->buf = malloc(n ? (size_t)n : 1);
  if (r->buf == NULL)
    return fs_refused(L, r, UV_ENOMEM);
  r->fd = fd;
  uv_buf_t b = uv_buf_init(r->buf, (unsigned)n);
  return fs_started(L, r, uv_fs_read(r->rt->loop, &r->req, fd, &b, 1,
                                     off < 0 ? -1 : (int64_t)off, fs_on_done));
}


/* fs_close(fd, target|nil) */
int ls__lua_fs_close(lua_State *L) {
  uv_file fd = (uv_file)luaL_checkinteger(L, 1);
  fs_req_t *r = fs_req_new(L, FS_CLOSE, 2);
  return fs_started(L, r, uv_fs_close(r->rt->loop, &r->req, fd, fs_on_done));
}


/* fs_unlink(path, target|nil) */
int ls__lua_fs_unlink(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  fs_req_t *r = fs_req_new(L, FS_UNLINK, 2);
  return fs_started(L, r, uv_fs_unlink(r->rt->loop, &r->req, path,
                                       fs_on_done));
}


/* fs_rename(from, to, target) */
int ls__lua_fs_rename(lua_State *L) {
  const char *from = luaL_checkstring(L, 1);
  const char *to = luaL_checkstring(L, 2);
  luaL_checkany(L, 3);
  fs_req_t *r = fs_req_new(L, FS_RENAME, 3);
  return fs_started(L, r, uv_fs_rename(r->rt->loop, &r->req, from, to,
                                       fs_on_done));
}


/* fs_copyfile(from, to, target): the destination must not exist. */
int ls__lua_fs_copyfile(lua_State *L) {
  const char *from = luaL_checkstring(L, 1);
  const char *to = luaL_checkstring(L, 2);
  luaL_checkany(L, 3);
  fs_req_t *r = fs_req_new(L, FS_COPY, 3);
  return fs_started(L, r, uv_fs_copyfile(r->rt->loop, &r->req, from, to,
                                         UV_FS_COPYFILE_EXCL, fs_on_done));
}


/* fs_stat(path, target): target gets {size, mtime, mode, type}. */
int ls__lua_fs_stat(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  luaL_checkany(L, 2);
  fs_req_t *r = fs_req_new(L, FS_STAT, 2);
  return fs_started(L, r, uv_fs_stat(r->rt->loop, &r->req, path, fs_on_done));
}
