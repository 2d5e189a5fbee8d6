/* stream.c: the byte stream under every socket, server connections and
 * client sockets alike. Reads are pulled: libuv reads only while the owner
 * reads (or a TLS handshake needs bytes), so a stream nobody reads leaves
 * its bytes in the kernel. Writes go through one queue, drained in one
 * place (stream_flush): `out` collects what waits, `flight` is with
 * uv_write; a corked stream collects writes and sends them in one system
 * call when uncorked. One deadline serves the owner's (header, body,
 * keep-alive, connect, read, idle) and the send timeout, which cuts off a
 * peer that takes no bytes for that long; the runtime keeps every stream's
 * in one heap behind one libuv timer. TLS (tls.c) is a filter inside:
 * bytes from the socket go through it before the owner sees them, and
 * everything written goes through it before the socket; above, plain TCP
 * and TLS look the same. A close runs its cleanup once, in the close
 * callbacks. Loop thread of the stream's runtime only. */
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <sys/socket.h>

#include "internal.h"

/* What only a TLS stream needs, allocated with its filter. */
struct ls_stream_tx_s {
  ls_stream_t *s;
  ls_buf_t plain;           /* plaintext to seal into records at once */
  ls_defer_t defer;         /* delivers plaintext TLS holds after a pause */
};

/* A corked stream writes at once when this much is collected: big bodies
 * are not copied into the queue only to be written right after. */
#define LS_CORK_MAX (64 * 1024)
/* Queue buffers bigger than this are given back once empty. */
#define LS_KEEP_BUF (64 * 1024)

static void stream_on_read(uv_stream_t *h, ssize_t n, const uv_buf_t *buf);
static void stream_on_write(uv_write_t *req, int status);
static void stream_pump(ls_stream_t *s);
static void stream_timer_update(ls_stream_t *s);


int ls__stream_init(ls_runtime_t *rt, ls_stream_t *s,
                    const ls_stream_ops_t *ops) {
  s->rt = rt;
  s->ops = ops;
  uv_tcp_init(rt->loop, &s->tcp);
  s->tcp.data = s;
  /* Its place in the deadline heap, kept from now until its close (the
   * heap never grows when a deadline is set). */
  if (rt->nstreams + 1 >= rt->deadlines_cap) {
    uint32_t cap = rt->deadlines_cap ? rt->deadlines_cap * 2 : 64;
    ls_stream_t **d = realloc(rt->deadlines, cap * sizeof(*d));
    if (d == NULL)
      return UV_ENOMEM;   /* the owner closes the stream */
    rt->deadlines = d;
    rt->deadlines_cap = cap;
  }
  rt->nstreams++;
  s->counted = 1;
  return 0;
}


size_t ls__stream_queued(const ls_stream_t *s) {
  return (s->tx ? s->tx->plain.len : 0) + s->out.len + s->tcp.write_queue_size;
}


/* ---- reading ------------------------------------------------------------ */

/* libuv reads with read(2); on a socket recv(2) does the same work with
 * less of the VFS around it (about 0.3 us less kernel time per request on
 * Linux). A zero-length buffer from the alloc callback makes libuv call
 * the read callback with UV_ENOBUFS instead of reading (documented: see
 * uv_alloc_cb): the stream then reads the socket itself. */
static void stream_alloc_none(uv_handle_t *h, size_t hint, uv_buf_t *buf) {
  (void)h;
  (void)hint;
  *buf = uv_buf_init(NULL, 0);
}


static int stream_uv_read(ls_stream_t *s, int on) {
  if (on && !s->uv_reading && !s->eof && !s->closing) {
    int err = uv_read_start((uv_stream_t *)&s->tcp, stream_alloc_none,
                            stream_on_read);
    if (err)
      return err;
    s->uv_reading = 1;
  } else if (!on && s->uv_reading) {
    uv_read_stop((uv_stream_t *)&s->tcp);
    s->uv_reading = 0;
  }
  return 0;
}


static void stream_on_defer(ls_defer_t *d) {
  ls_stream_t *s = ((struct ls_stream_tx_s *)
                    ((char *)d - offsetof(struct ls_stream_tx_s, defer)))->s;
  if (!s->closing && s->reading)
    stream_pump(s);
}


int ls__stream_read_start(ls_stream_t *s) {
  if (s->closing)
    return UV_EBADF;
  s->reading = 1;
  /* TLS may hold plaintext from bytes read before the pause: no socket
   * event will come for it, so the loop delivers it. */
  if (s->tls && s->tls_ready && ls__tls_pending(s->tls))
    ls__defer(s->rt, &s->tx->defer, stream_on_defer);
  return stream_uv_read(s, 1);
}


void ls__stream_read_stop(ls_stream_t *s) {
  s->reading = 0;
  if (s->tls && !s->tls_ready)
    return;   /* the handshake still needs the peer's bytes */
  stream_uv_read(s, 0);
}


/* No more input: the end of the stream or an error. */
static void stream_input_end(ls_stream_t *s, int err) {
  s->eof = 1;
  stream_uv_read(s, 0);
  if (s->tls && !s->tls_ready)
    s->ops->on_handshake(s, err);
  else
    s->ops->on_end(s, err);
}


static void stream_got(ls_stream_t *s, ssize_t n, const uv_buf_t *buf);


/* The socket is readable (libuv says so with UV_ENOBUFS, see
 * stream_alloc_none): recv into the runtime's read buffer, as libuv would
 * read, while the owner reads and the buffer comes back full (up to 32
 * times, as libuv). */
static void stream_on_read(uv_stream_t *h, ssize_t n, const uv_buf_t *buf) {
  ls_stream_t *s = h->data;
  if (n != UV_ENOBUFS) {   /* libuv read by itself: an error or EOF */
    if (n != 0)
      stream_got(s, n, buf);
    return;
  }
  uv_os_fd_t fd;
  if (uv_fileno((uv_handle_t *)h, &fd) != 0)
    return;
  for (int count = 32; count > 0 && s->uv_reading && !s->closing; count--) {
    uv_buf_t b;
    ls__read_alloc((uv_handle_t *)h, 0, &b);
    if (b.base == NULL) {
      stream_input_end(s, UV_ENOMEM);
      return;
    }
    ssize_t got;
    do
      got = recv(fd, b.base, b.len, 0);
    while (got < 0 && errno == EINTR);
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      ls__read_done((uv_handle_t *)h, &b);
      return;
    }
    int full = got == (ssize_t)b.len;
    stream_got(s, got > 0 ? got : got == 0 ? UV_EOF : uv_translate_sys_error(errno), &b);
    if (!full)
      return;
  }
}


/* n bytes of buf read (n > 0), or the input ended (UV_EOF, an error). */
static void stream_got(ls_stream_t *s, ssize_t n, const uv_buf_t *buf) {
  uv_stream_t *h = (uv_stream_t *)&s->tcp;
  if (n > 0 && s->tls) {
    int err = ls__tls_feed(s->tls, buf->base, (size_t)n);
    ls__read_done((uv_handle_t *)h, buf);   /* the pump reads into it */
    if (err)
      stream_input_end(s, err);
    else
      stream_pump(s);
    return;
  }
  if (n > 0)
    s->ops->on_read(s, buf->base, (size_t)n);
  else if (n < 0 && !s->closing)
    stream_input_end(s, (int)n);
  ls__read_done((uv_handle_t *)h, buf);
}


/* ---- writing ------------------------------------------------------------ */

/* Move what TLS has to send into out. 0 or UV_ENOMEM. */
static int tls_take(ls_stream_t *s) {
  size_t before = s->out.len;
  int err = ls__tls_output(s->tls, &s->out);
  s->bytes_in += s->out.len - before;
  return err;
}


/* Hand `out` to uv_write (it becomes `flight`). The send timeout starts
 * counting when output first has to wait. */
static int stream_start_write(ls_stream_t *s) {
  ls_buf_t t = s->flight;
  s->flight = s->out;
  s->out = t;
  s->out.len = 0;
  uv_buf_t b = uv_buf_init(s->flight.data, (unsigned)s->flight.len);
  /* Made only when the socket is full (the usual write goes out at once
   * through stream_try_send): an idle connection does not carry it. The
   * callback always runs, UV_ECANCELED when closed first, and frees it. */
  uv_write_t *w = malloc(sizeof(*w));
  int err = w ? uv_write(w, (uv_stream_t *)&s->tcp, &b, 1, stream_on_write)
              : UV_ENOMEM;
  if (err) {
    free(w);
    s->flight.len = 0;
    s->wfailed = 1;
    return err;
  }
  w->data = s;
  s->writing = 1;
  if (s->send_ms && s->send_deadline == 0) {
    s->send_deadline = uv_now(s->tcp.loop) + s->send_ms;
    s->send_mark = s->bytes_in - ls__stream_queued(s);
    stream_timer_update(s);
  }
  return 0;
}


/* uv_try_write's work with send(2)/sendmsg(2), which skip write(2)'s VFS
 * layer on a socket (as recv does for reads, stream_on_read): the bytes
 * the socket took, UV_EAGAIN (none now: connecting, or libuv has writes
 * queued, or the socket is full) or an error. On Unix a uv_buf_t is laid
 * out as a struct iovec (uv-unix.h). */
static int stream_try_send(ls_stream_t *s, const uv_buf_t *bufs, unsigned n) {
  if (s->tcp.connect_req != NULL || s->tcp.write_queue_size != 0)
    return UV_EAGAIN;
  uv_os_fd_t fd;
  if (uv_fileno((uv_handle_t *)&s->tcp, &fd) != 0)
    return UV_EBADF;
  ssize_t r;
  do {
    if (n == 1) {
      r = send(fd, bufs[0].base, bufs[0].len, MSG_NOSIGNAL);
    } else {
      struct msghdr msg;
      memset(&msg, 0, sizeof(msg));
      msg.msg_iov = (struct iovec *)(void *)bufs;
      msg.msg_iovlen = n;
      r = sendmsg(fd, &msg, MSG_NOSIGNAL);
    }
  } while (r < 0 && errno == EINTR);
  if (r >= 0)
    return (int)r;
  if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)
    return UV_EAGAIN;
  return uv_translate_sys_error(errno);
}


/* Drop the first n bytes of out. */
static void out_consume(ls_stream_t *s, size_t n) {
  if (n < s->out.len)
    memmove(s->out.data, s->out.data + n, s->out.len - n);
  s->out.len -= n;
}


static void stream_finish_output(ls_stream_t *s);


/* Write what `out` holds: now as far as the socket takes it, the rest
 * through uv_write. 0 or an error (the stream cannot write any more).
 * Output that is all written ends a pending end or shutdown. */
static int stream_flush(ls_stream_t *s) {
  if (s->writing || s->closing || s->corked)
    return 0;
  if (s->out.len) {
    uv_buf_t b = uv_buf_init(s->out.data, (unsigned)s->out.len);
    int n = stream_try_send(s, &b, 1);
    if (n < 0 && n != UV_EAGAIN) {
      s->wfailed = 1;
      s->out.len = 0;
      return n;
    }
    if (n > 0)
      out_consume(s, (size_t)n);
    if (s->out.len)
      return stream_start_write(s);
  }
  if (s->end_pending || s->shut_pending)
    stream_finish_output(s);
  return 0;
}


/* Everything was written at once: a pending end or shutdown may go. */
static int stream_done_now(ls_stream_t *s) {
  if (s->end_pending || s->shut_pending)
    stream_finish_output(s);
  return 0;
}


/* Gathered into one buffer up to this many bytes (stream_write_now). */
#define LS_GATHER_MAX 2048


/* Write `out` and bufs (total bytes) at once with one send; what the
 * socket does not take is copied behind. Plain streams with nothing in
 * flight only. */
static int stream_write_now(ls_stream_t *s, const uv_buf_t *bufs,
                            unsigned nbufs, size_t total) {
  uv_buf_t v[8];
  unsigned k = 0;
  total += s->out.len;
  if (s->out.len)
    v[k++] = uv_buf_init(s->out.data, (unsigned)s->out.len);
  for (unsigned i = 0; i < nbufs && k < 8; i++)
    if (bufs[i].len)
      v[k++] = bufs[i];
  if (k == 0)
    return 0;
  /* A small answer in pieces (a head and its body) goes out in one piece:
   * send(2) of one buffer costs the kernel less than sendmsg(2)'s iovec,
   * for a copy of a few hundred bytes. What is not taken is copied behind
   * from the pieces, as below. */
  char gathered[LS_GATHER_MAX];
  if (k > 1 && total <= sizeof(gathered)) {
    size_t at = 0;
    for (unsigned i = 0; i < k; i++) {
      memcpy(gathered + at, v[i].base, v[i].len);
      at += v[i].len;
    }
    v[0] = uv_buf_init(gathered, (unsigned)at);
    k = 1;
  }
  int n = stream_try_send(s, v, k);
  if (n < 0 && n != UV_EAGAIN) {
    s->wfailed = 1;
    s->out.len = 0;
    return n;
  }
  size_t done = n > 0 ? (size_t)n : 0;
  if (done == total) {
    s->out.len = 0;
    return stream_done_now(s);
  }
  size_t from_out = done < s->out.len ? done : s->out.len;
  out_consume(s, from_out);
  done -= from_out;
  for (unsigned i = 0; i < nbufs; i++) {
    size_t skip = done < bufs[i].len ? done : bufs[i].len;
    done -= skip;
    if (bufs[i].len > skip &&
        ls__buf_append(&s->out, bufs[i].base + skip, bufs[i].len - skip))
      return UV_ENOMEM;
  }
  if (s->out.len)
    return stream_start_write(s);
  if (s->end_pending || s->shut_pending)
    stream_finish_output(s);
  return 0;
}


/* TLS: seal the collected plaintext into records (one SSL_write: a head
 * and its body, or pipelined answers, share records) and queue them. */
static int stream_seal(ls_stream_t *s) {
  ls_buf_t *plain = &s->tx->plain;
  if (plain->len == 0)
    return 0;
  int err = ls__tls_write(s->tls, plain->data, plain->len);
  plain->len = 0;
  if (plain->cap > LS_KEEP_BUF)
    ls__buf_free(plain);
  if (err)
    return err;
  return tls_take(s) ? UV_ENOMEM : 0;
}


/* TLS writes: small ones are collected and sealed together (at once, or
 * when a corked stream is uncorked); big ones go to SSL_write as they
 * are, without the copy. */
static int stream_write_tls(ls_stream_t *s, const uv_buf_t *bufs,
                            unsigned nbufs) {
  size_t total = 0;
  int err = 0;
  if (!s->tls_ready)
    return UV_ENOTCONN;
  for (unsigned i = 0; i < nbufs; i++)
    total += bufs[i].len;
  int corked = s->corked && !s->cork_open;
  s->cork_open = 0;
  if (s->tx->plain.len + total <= LS_CORK_MAX) {
    for (unsigned i = 0; i < nbufs; i++)
      if (ls__buf_append(&s->tx->plain, bufs[i].base, bufs[i].len))
        return UV_ENOMEM;
    if (corked)
      return 0;
    err = stream_seal(s);
  } else {
    err = stream_seal(s);
    for (unsigned i = 0; i < nbufs && err == 0; i++)
      if (bufs[i].len)
        err = ls__tls_write(s->tls, bufs[i].base, bufs[i].len);
    if (err == 0 && tls_take(s))
      err = UV_ENOMEM;
  }
  if (err)
    return err;
  if (corked && s->out.len < LS_CORK_MAX)
    return 0;
  int c = s->corked;   /* written now: what the cork held goes with it */
  s->corked = 0;
  err = stream_flush(s);
  s->corked = c;
  return err;
}


int ls__stream_write(ls_stream_t *s, const uv_buf_t *bufs, unsigned nbufs) {
  if (s->closing || s->wfailed)
    return UV_EPIPE;
  if (s->tls)
    return stream_write_tls(s, bufs, nbufs);
  size_t total = 0;
  for (unsigned i = 0; i < nbufs; i++)
    total += bufs[i].len;
  s->bytes_in += total;
  int open = s->cork_open;
  s->cork_open = 0;
  if (!s->writing && nbufs <= 7 &&
      (!s->corked || open || s->out.len + total > LS_CORK_MAX))
    return stream_write_now(s, bufs, nbufs, total);
  for (unsigned i = 0; i < nbufs; i++)
    if (ls__buf_append(&s->out, bufs[i].base, bufs[i].len))
      return UV_ENOMEM;
  return s->corked ? 0 : stream_flush(s);
}


void ls__stream_cork(ls_stream_t *s) {
  s->corked++;
}


int ls__stream_uncork(ls_stream_t *s) {
  if (--s->corked > 0)
    return 0;
  if (s->tls && s->tx->plain.len && !s->closing && !s->wfailed) {
    int err = stream_seal(s);
    if (err)
      return err;
  }
  return stream_flush(s);
}


/* Close-notify and half-close or close, once the output is written. */
static void stream_on_shutdown(uv_shutdown_t *req, int status) {
  ls_stream_t *s = req->data;
  free(req);
  if (status < 0 && !s->closing)   /* also UV_ECANCELED: closed first */
    s->ops->on_end(s, status);
}


static void stream_finish_output(ls_stream_t *s) {
  if (s->end_pending) {
    ls__stream_close(s);
  } else if (s->shut_pending) {
    s->shut_pending = 0;
    uv_shutdown_t *r = malloc(sizeof(*r));   /* rare: made when needed */
    int err = r ? uv_shutdown(r, (uv_stream_t *)&s->tcp, stream_on_shutdown)
                : UV_ENOMEM;
    if (err) {
      free(r);
      s->ops->on_end(s, err);
    } else {
      r->data = s;
    }
  }
}


static void stream_on_write(uv_write_t *req, int status) {
  ls_stream_t *s = req->data;
  free(req);
  s->writing = 0;
  s->flight.len = 0;
  if (s->flight.cap > LS_KEEP_BUF)
    ls__buf_free(&s->flight);
  if (s->closing)
    return;
  if (status == 0)
    status = stream_flush(s);
  if (status < 0) {
    s->wfailed = 1;
    s->out.len = 0;
    s->send_deadline = 0;
    s->ops->on_drain(s, status);
    return;
  }
  if (s->writing)
    return;
  s->send_deadline = 0;
  if (s->out.cap > LS_KEEP_BUF)
    ls__buf_free(&s->out);
  if (!s->closing)   /* an end or shutdown may have run in the flush */
    s->ops->on_drain(s, 0);
}


/* ---- deadlines ---------------------------------------------------------- */

/* Every stream with a deadline is in its runtime's min-heap by timer_due;
 * one libuv timer (rt->stream_timer) is set for the top. Deadlines move
 * often (each request moves its connection's several times), so a stream
 * is only moved up when its deadline comes earlier than its key; one that
 * comes due early finds its later deadline and goes back in. */

static void deadlines_fire(uv_timer_t *t);

static void heap_place(ls_runtime_t *rt, uint32_t i, ls_stream_t *s) {
  rt->deadlines[i] = s;
  s->heap_idx = i;
}


static void heap_up(ls_runtime_t *rt, uint32_t i, ls_stream_t *s) {
  while (i > 1) {
    ls_stream_t *p = rt->deadlines[i / 2];
    if (p->timer_due <= s->timer_due)
      break;
    heap_place(rt, i, p);
    i /= 2;
  }
  heap_place(rt, i, s);
}


static void heap_down(ls_runtime_t *rt, uint32_t i, ls_stream_t *s) {
  uint32_t n = rt->ndeadlines;
  for (;;) {
    uint32_t c = 2 * i;
    if (c > n)
      break;
    if (c < n && rt->deadlines[c + 1]->timer_due < rt->deadlines[c]->timer_due)
      c++;
    if (s->timer_due <= rt->deadlines[c]->timer_due)
      break;
    heap_place(rt, i, rt->deadlines[c]);
    i = c;
  }
  heap_place(rt, i, s);
}


static void heap_remove(ls_runtime_t *rt, ls_stream_t *s) {
  uint32_t i = s->heap_idx;
  if (i == 0)
    return;
  s->heap_idx = 0;
  if (!s->timer_weak)
    rt->deadlines_strong--;
  ls_stream_t *last = rt->deadlines[rt->ndeadlines--];
  if (last == s)
    return;
  if (i > 1 && last->timer_due < rt->deadlines[i / 2]->timer_due)
    heap_up(rt, i, last);
  else
    heap_down(rt, i, last);
}


/* Set the libuv timer for the top of the heap; it keeps the loop alive
 * while a stream whose deadline should does (not a pooled client socket's
 * idle timeout). */
static void deadlines_arm(ls_runtime_t *rt) {
  uv_timer_t *t = &rt->stream_timer;
  if (uv_is_closing((uv_handle_t *)t))   /* the runtime is going */
    return;
  if (rt->ndeadlines == 0) {
    uv_timer_stop(t);
    return;
  }
  uint64_t due = rt->deadlines[1]->timer_due;
  if (!uv_is_active((uv_handle_t *)t) || due != rt->stream_timer_due) {
    uint64_t now = uv_now(rt->loop);
    rt->stream_timer_due = due;
    uv_timer_start(t, deadlines_fire, due > now ? due - now : 0, 0);
  }
  if (rt->deadlines_strong)
    uv_ref((uv_handle_t *)t);
  else
    uv_unref((uv_handle_t *)t);
}


/* Put s in the heap for its earliest deadline (or move it up). */
static void stream_timer_update(ls_stream_t *s) {
  ls_runtime_t *rt = s->rt;
  uint64_t due = s->deadline;
  if (s->send_deadline && (due == 0 || s->send_deadline < due))
    due = s->send_deadline;
  if (due == 0 || s->closing || (s->heap_idx && s->timer_due <= due))
    return;
  /* One set while its deadlines fire comes due at the next turn at the
   * earliest: the loop over due streams always ends. */
  if (rt->deadlines_firing && due <= uv_now(rt->loop))
    due = uv_now(rt->loop) + 1;
  s->timer_due = due;
  if (s->heap_idx) {
    heap_up(rt, s->heap_idx, s);
  } else {   /* its place was reserved by ls__stream_init */
    if (!s->timer_weak)
      rt->deadlines_strong++;
    heap_up(rt, ++rt->ndeadlines, s);
  }
  if (!rt->deadlines_firing)
    deadlines_arm(rt);
}


/* s came due at now. Send timeout: output that waits must make progress:
 * the bytes the kernel took (all that came in, less what is still queued
 * here or in libuv) are compared with the last check's. */
static void stream_due(ls_stream_t *s, uint64_t now) {
  if (s->send_deadline && now >= s->send_deadline) {
    size_t left = ls__stream_queued(s);
    uint64_t written = s->bytes_in - left;
    if (left == 0) {
      s->send_deadline = 0;
    } else if (written > s->send_mark) {
      s->send_mark = written;
      s->send_deadline = now + s->send_ms;
    } else {
      s->send_deadline = 0;
      s->ops->on_timeout(s, LS_TIMEOUT_SEND);
      if (s->closing)
        return;
    }
  }
  if (s->deadline && now >= s->deadline) {
    s->deadline = 0;
    s->ops->on_timeout(s, LS_TIMEOUT_DEADLINE);
    if (s->closing)
      return;
  }
  stream_timer_update(s);
}


static void deadlines_fire(uv_timer_t *t) {
  ls_runtime_t *rt = t->data;
  uint64_t now = uv_now(t->loop);
  rt->deadlines_firing = 1;
  while (rt->ndeadlines && rt->deadlines[1]->timer_due <= now) {
    ls_stream_t *s = rt->deadlines[1];
    heap_remove(rt, s);
    stream_due(s, now);
  }
  rt->deadlines_firing = 0;
  deadlines_arm(rt);
}


void ls__stream_deadline_at(ls_stream_t *s, uint64_t ms) {
  s->deadline = uv_now(s->rt->loop) + ms;
  stream_timer_update(s);
}


void ls__stream_send_timeout(ls_stream_t *s, uint64_t ms) {
  s->send_ms = ms;
  if (ms == 0)
    s->send_deadline = 0;
  else if (s->writing && s->send_deadline == 0) {
    s->send_deadline = uv_now(s->rt->loop) + ms;
    s->send_mark = s->bytes_in - ls__stream_queued(s);
    stream_timer_update(s);
  }
}


void ls__stream_deadlines_init(ls_runtime_t *rt) {
  uv_timer_init(rt->loop, &rt->stream_timer);
  rt->stream_timer.data = rt;
  uv_unref((uv_handle_t *)&rt->stream_timer);
}


void ls__stream_deadlines_close(ls_runtime_t *rt) {
  uv_close((uv_handle_t *)&rt->stream_timer, NULL);
}


void ls__stream_deadlines_free(ls_runtime_t *rt) {
  free(rt->deadlines);
  rt->deadlines = NULL;
  rt->ndeadlines = rt->deadlines_cap = rt->deadlines_strong = rt->nstreams = 0;
}


/* ---- TLS ------------------------------------------------------------------ */

/* Queue what TLS produced (handshake messages, records, alerts) and write
 * it unless corked. 0 or an error. */
static int stream_tls_out(ls_stream_t *s) {
  if (s->closing || s->wfailed)
    return 0;
  if (tls_take(s))
    return UV_ENOMEM;
  return s->corked ? 0 : stream_flush(s);
}


/* Move TLS along: the handshake until it is done, then plaintext to the
 * owner for as long as it reads. Never from inside an owner's call: from
 * the read callback or the deferred queue. */
static void stream_pump(ls_stream_t *s) {
  if (!s->tls_ready) {
    int r = ls__tls_handshake(s->tls);
    int werr = stream_tls_out(s);   /* also an alert after a failure */
    if (s->closing)
      return;
    if (r == 0 && werr == 0)
      return;   /* waits for the peer */
    if (r < 0 || werr) {
      s->eof = 1;
      stream_uv_read(s, 0);
      s->ops->on_handshake(s, r < 0 ? r : werr);
      return;
    }
    s->tls_ready = 1;
    s->ops->on_handshake(s, 0);
    if (s->closing)
      return;
    if (!s->reading)
      stream_uv_read(s, 0);
  }
  uv_buf_t b;
  ls__read_alloc((uv_handle_t *)&s->tcp, 0, &b);
  if (b.base == NULL) {
    stream_input_end(s, UV_ENOMEM);
    return;
  }
  int end = 0;
  while (s->reading && !s->closing) {
    int n = ls__tls_read(s->tls, b.base, b.len);
    if (n > 0) {
      s->ops->on_read(s, b.base, (size_t)n);
      continue;
    }
    end = n;
    break;
  }
  ls__read_done((uv_handle_t *)&s->tcp, &b);
  if (s->closing)
    return;
  int werr = stream_tls_out(s);   /* what reading produced: alerts, tickets */
  if (end < 0)
    stream_input_end(s, end);
  else if (werr && !s->closing)
    s->ops->on_drain(s, werr);
}


int ls__stream_tls(ls_stream_t *s, void *ssl_ctx, int server,
                   const char *name, int check_name) {
  s->tx = calloc(1, sizeof(*s->tx));
  if (s->tx == NULL)
    return UV_ENOMEM;
  s->tx->s = s;
  s->tls = ls__tls_new(ssl_ctx, server, name, check_name);
  if (s->tls == NULL)
    return UV_ENOMEM;
  if (!server) {   /* the ClientHello goes out now */
    int r = ls__tls_handshake(s->tls);
    if (r < 0)
      return r;
    int err = stream_tls_out(s);
    if (err)
      return err;
  }
  return stream_uv_read(s, 1);
}


const char *ls__stream_error(const ls_stream_t *s) {
  return s->tls ? ls__tls_reason(s->tls) : "";
}


/* ---- closing ------------------------------------------------------------ */

static void stream_on_close(uv_handle_t *h) {
  ls_stream_t *s = h->data;
  if (s->counted)
    s->rt->nstreams--;
  ls__buf_free(&s->out);
  ls__buf_free(&s->flight);
  if (s->tls)
    ls__tls_free(s->tls);
  s->tls = NULL;
  if (s->tx) {
    ls__buf_free(&s->tx->plain);
    free(s->tx);
    s->tx = NULL;
  }
  s->ops->on_close(s);
}


void ls__stream_reset(ls_stream_t *s) {
  uv_os_fd_t fd;
  struct linger lg = {1, 0};
  if (!s->closing && uv_fileno((uv_handle_t *)&s->tcp, &fd) == 0)
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
}


void ls__stream_close(ls_stream_t *s) {
  if (s->closing)
    return;
  /* TLS says goodbye if the socket takes it now; nothing waits for it. */
  if (s->tls && s->tls_ready && !s->wfailed && !s->writing &&
      s->out.len == 0 && !s->rt->closing) {
    ls__tls_close_notify(s->tls);
    if (tls_take(s) == 0 && s->out.len) {
      uv_buf_t b = uv_buf_init(s->out.data, (unsigned)s->out.len);
      uv_try_write((uv_stream_t *)&s->tcp, &b, 1);
    }
  }
  s->closing = 1;
  s->reading = 0;
  if (s->tx)
    ls__defer_cancel(s->rt, &s->tx->defer);
  /* Out of the deadline heap; the timer follows what is left (a closed
   * stream's deadline must not keep the loop alive). */
  if (s->heap_idx) {
    heap_remove(s->rt, s);
    if (!s->rt->deadlines_firing)
      deadlines_arm(s->rt);
  }
  uv_close((uv_handle_t *)&s->tcp, stream_on_close);
}


void ls__stream_end(ls_stream_t *s) {
  if (s->closing)
    return;
  s->end_pending = 1;
  if (!s->writing && !s->corked)
    stream_flush(s);
}


void ls__stream_shutdown(ls_stream_t *s) {
  if (s->closing)
    return;
  if (s->tls && s->tls_ready && !s->wfailed) {
    stream_seal(s);   /* what was written goes before the close_notify */
    ls__tls_close_notify(s->tls);
    stream_tls_out(s);
  }
  s->shut_pending = 1;
  if (!s->writing && !s->corked)
    stream_flush(s);
}
