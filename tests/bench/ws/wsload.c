/* tests/bench/ws/wsload.c: the WebSocket load client of tests/bench/ws.sh.
 * One thread, epoll, non-blocking sockets, hand-written RFC 6455 client
 * framing (masked frames out; unmasked frames in, pings answered), so that
 * it costs the machine far less per message than the servers it drives and
 * drives every server the same way.
 *
 *   wsload echo   HOST PORT PATH [-c 64] [-s 64] [-d 10] [-w 2] [-p PID]
 *     -c connections each keep one text message of -s bytes in flight: a
 *     message is sent, its echo awaited and checked byte for byte, the next
 *     sent; -w seconds of warm-up, then -d seconds measured.
 *   wsload fanout HOST PORT PATH [-c 2000] [-s 64] [-r 20] [-p PID]
 *     -c connections join one room (PATH); connection 0 publishes one
 *     message, and the time from its write to the moment the last of the -c
 *     members (the publisher included) has read it whole is one fan-out;
 *     -r fan-outs measured, one after another, after warm-up ones.
 *
 * With -p, the server's CPU time (user + system of that process, from
 * /proc/PID/stat) over the measured window is reported per message or per
 * fan-out, beside this client's own CPU time: a client near 100% of its
 * core is the bottleneck, and then the server's CPU per message is the
 * figure to compare. Prints one line of key=value fields on stdout;
 * problems go to stderr; exit status 1 when anything went wrong (a
 * handshake refused, a wrong echo, a close, a timeout). Every wait has a
 * deadline. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { ST_NEW, ST_CONNECTING, ST_HANDSHAKE, ST_OPEN, ST_DEAD };

typedef struct {
  int fd;
  int state;
  unsigned char *rbuf;   /* bytes read and not yet parsed */
  size_t rlen, rcap;
  unsigned char *wbuf;   /* bytes the socket did not take yet */
  size_t wlen, wcap;
  uint64_t sent_ns;      /* echo: when the message in flight was sent */
  uint64_t seq;          /* echo: its sequence number */
  long seen;             /* fanout: the last round this member received */
} conn_t;

static struct {
  int echo;
  const char *host, *path;
  int port, conns, size, rounds;
  double dur, warmup;
  int pid;
} opt;

static conn_t *conns;
static int epfd;
static int open_count, dead_count, handshaking;
static long errors;
static uint64_t rng = 0x9e3779b97f4a7c15ull;
static unsigned char *msg;  /* the payload being sent (echo: per send) */

/* Echo: round trips completed in the window, and their times (1 us buckets). */
#define HIST_MAX 1000000
static uint32_t *hist;
static uint64_t hist_over, done_msgs;
static int measuring;
static int closing;   /* the end: close frames sent, echoes no longer answered */

/* Fan-out: the round being published and how many members have it. */
static long round_no;
static int round_got;


static void fail(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "wsload: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
  va_end(ap);
  errors++;
}


static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}


static uint64_t xorshift(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}


/* User + system CPU seconds of process pid (-1: this process). */
static double cpu_seconds(int pid) {
  if (pid < 0) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
           ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
  }
  char path[64], buf[4096];
  snprintf(path, sizeof(path), "/proc/%d/stat", pid);
  FILE *f = fopen(path, "r");
  if (f == NULL) return -1;
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = 0;
  char *p = strrchr(buf, ')');   /* the name may hold spaces */
  unsigned long ut, st;
  /* after ")": state ppid pgrp session tty tpgid flags minflt cminflt
   * majflt cmajflt utime stime */
  if (p == NULL || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
                          &ut, &st) != 2)
    return -1;
  return (double) (ut + st) / sysconf(_SC_CLK_TCK);
}


static void arm(conn_t *c, uint32_t events) {
  struct epoll_event ev = { .events = events, .data.u32 = (uint32_t) (c - conns) };
  if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) != 0) fail("epoll_ctl: %s", strerror(errno));
}


static void kill_conn(conn_t *c, const char *why) {
  if (c->state == ST_DEAD) return;
  if (why) fail("connection %d: %s", (int) (c - conns), why);
  if (c->state == ST_OPEN) open_count--;
  if (c->state == ST_HANDSHAKE || c->state == ST_CONNECTING) handshaking--;
  c->state = ST_DEAD;
  dead_count++;
  close(c->fd);
  c->fd = -1;
}


/* Write what is queued; keep the rest and wait for EPOLLOUT. */
static void flush(conn_t *c) {
  while (c->wlen > 0) {
    ssize_t n = write(c->fd, c->wbuf, c->wlen);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) { arm(c, EPOLLIN | EPOLLOUT); return; }
      kill_conn(c, strerror(errno));
      return;
    }
    memmove(c->wbuf, c->wbuf + n, c->wlen - (size_t) n);
    c->wlen -= (size_t) n;
  }
  arm(c, EPOLLIN);
}


static void out(conn_t *c, const void *data, size_t len) {
  if (c->state == ST_DEAD) return;
  if (c->wlen == 0) {   /* the fast path: the socket takes it all */
    ssize_t n;
    do n = write(c->fd, data, len); while (n < 0 && errno == EINTR);
    if (n == (ssize_t) len) return;
    if (n < 0 && errno != EAGAIN) { kill_conn(c, strerror(errno)); return; }
    if (n > 0) { data = (const char *) data + n; len -= (size_t) n; }
  }
  if (c->wlen + len > c->wcap) {
    c->wcap = (c->wlen + len) * 2;
    c->wbuf = realloc(c->wbuf, c->wcap);
    if (c->wbuf == NULL) { perror("wsload: realloc"); exit(1); }
  }
  memcpy(c->wbuf + c->wlen, data, len);
  c->wlen += len;
  flush(c);
}


/* One masked frame, FIN set. */
static void send_frame(conn_t *c, int opcode, const unsigned char *payload, size_t len) {
  unsigned char f[14 + 65536];
  unsigned char *p = f;
  if (len > 65536) { fail("frame too large"); return; }
  *p++ = (unsigned char) (0x80 | opcode);
  if (len < 126) {
    *p++ = (unsigned char) (0x80 | len);
  } else {
    *p++ = 0x80 | 126;
    *p++ = (unsigned char) (len >> 8);
    *p++ = (unsigned char) len;
  }
  uint32_t m = (uint32_t) xorshift();
  unsigned char mask[4] = { m >> 24, m >> 16, m >> 8, m };
  memcpy(p, mask, 4);
  p += 4;
  for (size_t i = 0; i < len; i++) p[i] = payload[i] ^ mask[i & 3];
  out(c, f, (size_t) (p - f) + len);
}


/* The payload of echo message seq on connection i, or of fan-out round r
 * (i < 0): a number, then letters up to opt.size bytes. */
static void make_message(unsigned char *buf, int i, uint64_t n) {
  char head[40];
  int k = snprintf(head, sizeof(head), "%s %016" PRIx64 " ", i < 0 ? "round" : "echo", n);
  for (int j = 0; j < opt.size; j++)
    buf[j] = j < k ? (unsigned char) head[j] : (unsigned char) ('a' + (j + (i < 0 ? 0 : i)) % 26);
}


static void echo_send(conn_t *c) {
  int i = (int) (c - conns);
  c->seq++;
  make_message(msg, i, c->seq);
  c->sent_ns = now_ns();
  send_frame(c, 0x1, msg, (size_t) opt.size);
}


static void publish(void) {
  round_no++;
  round_got = 0;
  make_message(msg, -1, (uint64_t) round_no);
  send_frame(&conns[0], 0x1, msg, (size_t) opt.size);
}


/* A whole message arrived on c. */
static void on_message(conn_t *c, const unsigned char *p, size_t len) {
  static unsigned char want[65536];
  if (closing) return;
  if (len != (size_t) opt.size) { kill_conn(c, "a message of the wrong size"); return; }
  if (opt.echo) {
    make_message(want, (int) (c - conns), c->seq);
    if (memcmp(p, want, len) != 0) { kill_conn(c, "the echo differs from the message sent"); return; }
    if (measuring) {
      uint64_t us = (now_ns() - c->sent_ns) / 1000;
      if (us < HIST_MAX) hist[us]++; else hist_over++;
      done_msgs++;
    }
    echo_send(c);
    return;
  }
  unsigned long long r;
  if (sscanf((const char *) p, "round %llx", &r) != 1) { kill_conn(c, "not a round message"); return; }
  make_message(want, -1, r);
  if (memcmp(p, want, len) != 0) { kill_conn(c, "a broadcast message differs from the one published"); return; }
  if ((long) r > round_no) { kill_conn(c, "a round not published yet"); return; }
  if ((long) r == round_no && c->seen < (long) r) round_got++;
  if ((long) r > c->seen) c->seen = (long) r;
}


/* Parse every whole frame in c->rbuf. */
static void parse_frames(conn_t *c) {
  size_t off = 0;
  while (c->state == ST_OPEN && c->rlen - off >= 2) {
    unsigned char *f = c->rbuf + off;
    size_t avail = c->rlen - off, hdr = 2;
    uint64_t len = f[1] & 0x7f;
    if (f[1] & 0x80) { kill_conn(c, "a masked frame from the server"); return; }
    if (len == 126) {
      if (avail < 4) break;
      len = (uint64_t) f[2] << 8 | f[3];
      hdr = 4;
    } else if (len == 127) {
      if (avail < 10) break;
      len = 0;
      for (int i = 2; i < 10; i++) len = len << 8 | f[i];
      hdr = 10;
    }
    if (len > 1 << 20) { kill_conn(c, "a frame over 1 MiB"); return; }
    if (avail < hdr + len) {
      if (hdr + len > c->rcap) {
        c->rcap = hdr + len;
        memmove(c->rbuf, f, avail);
        c->rlen = avail;
        off = 0;
        c->rbuf = realloc(c->rbuf, c->rcap);
        if (c->rbuf == NULL) { perror("wsload: realloc"); exit(1); }
      }
      break;
    }
    int opcode = f[0] & 0x0f;
    if (!(f[0] & 0x80) || opcode == 0) { kill_conn(c, "a fragmented message"); return; }
    off += hdr + len;
    switch (opcode) {
    case 0x1: case 0x2: on_message(c, f + hdr, (size_t) len); break;
    case 0x9: send_frame(c, 0xA, f + hdr, (size_t) len); break;   /* ping: pong */
    case 0xA: break;
    case 0x8: kill_conn(c, closing ? NULL : "closed by the server"); return;
    default: kill_conn(c, "an unknown opcode"); return;
    }
  }
  if (c->state == ST_DEAD) return;
  memmove(c->rbuf, c->rbuf + off, c->rlen - off);
  c->rlen -= off;
}


static void start_handshake(conn_t *c) {
  static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  char key[25], req[1024];
  for (int i = 0; i < 22; i++) key[i] = b64[xorshift() % 64];
  key[21] = 'A';   /* 16 bytes: the last of 22 digits carries 4 bits */
  key[22] = key[23] = '=';
  key[24] = 0;
  int n = snprintf(req, sizeof(req),
                   "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                   "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                   "Sec-WebSocket-Version: 13\r\n\r\n", opt.path, opt.host, opt.port, key);
  c->state = ST_HANDSHAKE;
  arm(c, EPOLLIN);
  out(c, req, (size_t) n);
}


/* The handshake's answer: 101 and no extension (none was offered). */
static void read_handshake(conn_t *c) {
  unsigned char *end = memmem(c->rbuf, c->rlen, "\r\n\r\n", 4);
  if (end == NULL) {
    if (c->rlen > 8192) kill_conn(c, "an answer head over 8 KB");
    return;
  }
  *end = 0;
  if (strncmp((char *) c->rbuf, "HTTP/1.1 101 ", 13) != 0) {
    char line[120];
    int n = (int) strcspn((char *) c->rbuf, "\r\n");
    snprintf(line, sizeof(line), "handshake refused: %.*s", n < 80 ? n : 80, (char *) c->rbuf);
    kill_conn(c, line);
    return;
  }
  if (strcasestr((char *) c->rbuf, "\nsec-websocket-extensions:") != NULL) {
    kill_conn(c, "an extension that was not offered");
    return;
  }
  size_t head = (size_t) (end + 4 - c->rbuf);
  memmove(c->rbuf, c->rbuf + head, c->rlen - head);
  c->rlen -= head;
  c->state = ST_OPEN;
  handshaking--;
  open_count++;
  parse_frames(c);
}


static void on_readable(conn_t *c) {
  if (c->rlen == c->rcap) {
    c->rcap *= 2;
    c->rbuf = realloc(c->rbuf, c->rcap);
    if (c->rbuf == NULL) { perror("wsload: realloc"); exit(1); }
  }
  ssize_t n = read(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen);
  if (n < 0) {
    if (errno == EAGAIN || errno == EINTR) return;
    kill_conn(c, strerror(errno));
    return;
  }
  if (n == 0) { kill_conn(c, closing ? NULL : "closed by the server (no close frame)"); return; }
  c->rlen += (size_t) n;
  if (c->state == ST_HANDSHAKE) read_handshake(c);
  else parse_frames(c);
}


static void open_conn(conn_t *c) {
  struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t) opt.port) };
  if (inet_pton(AF_INET, opt.host, &sa.sin_addr) != 1) {
    fprintf(stderr, "wsload: HOST must be an IPv4 address: %s\n", opt.host);
    exit(2);
  }
  c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (c->fd < 0) { fprintf(stderr, "wsload: socket: %s (raise ulimit -n)\n", strerror(errno)); exit(1); }
  int one = 1;
  setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  c->rcap = 4096;
  c->rbuf = malloc(c->rcap);
  c->state = ST_CONNECTING;
  handshaking++;
  struct epoll_event ev = { .events = EPOLLOUT, .data.u32 = (uint32_t) (c - conns) };
  epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
  if (connect(c->fd, (struct sockaddr *) &sa, sizeof(sa)) != 0 && errno != EINPROGRESS)
    kill_conn(c, strerror(errno));
}


/* Run the loop until done() or the deadline (ns); false at the deadline. */
static int run_until(int (*done)(void), uint64_t deadline) {
  struct epoll_event evs[512];
  while (!done()) {
    uint64_t t = now_ns();
    if (t >= deadline) return 0;
    int ms = (int) ((deadline - t) / 1000000) + 1;
    int n = epoll_wait(epfd, evs, 512, ms > 100 ? 100 : ms);
    if (n < 0 && errno != EINTR) { perror("wsload: epoll_wait"); exit(1); }
    for (int i = 0; i < n; i++) {
      conn_t *c = &conns[evs[i].data.u32];
      if (c->state == ST_DEAD) continue;
      if (c->state == ST_CONNECTING) {
        int err = 0;
        socklen_t l = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &l);
        if (err != 0) kill_conn(c, strerror(err));
        else start_handshake(c);
        continue;
      }
      if (evs[i].events & EPOLLOUT) flush(c);
      if (c->state != ST_DEAD && (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))) on_readable(c);
    }
  }
  return 1;
}


static int never(void) { return 0; }
static int all_closed(void) { return open_count == 0; }


/* The close handshake on every open connection (code 1000), so that the
 * servers see clean closes; 2 s for their answers. */
static void close_all(void) {
  static const unsigned char code[2] = { 0x03, 0xe8 };
  closing = 1;
  int before = dead_count;
  for (int i = 0; i < opt.conns; i++)
    if (conns[i].state == ST_OPEN) send_frame(&conns[i], 0x8, code, 2);
  run_until(all_closed, now_ns() + 2000000000u);
  dead_count = before;   /* these closes are no failures */
}
static int handshakes_done(void) { return handshaking == 0; }
static int round_done(void) { return round_got >= open_count || dead_count > 0; }


/* Open every connection, at most 256 handshakes at a time (listen
 * backlogs are often 511). False if one failed or 60 s went by. */
static int connect_all(void) {
  uint64_t deadline = now_ns() + 60ull * 1000000000u;
  for (int i = 0; i < opt.conns; i++) {
    while (handshaking >= 256 && dead_count == 0 && now_ns() < deadline)
      run_until(never, now_ns() + 1000000);
    if (dead_count > 0 || now_ns() >= deadline) break;
    open_conn(&conns[i]);
  }
  if (dead_count == 0) run_until(handshakes_done, deadline);
  if (open_count != opt.conns) {
    fail("%d of %d connections open after their handshakes", open_count, opt.conns);
    return 0;
  }
  return 1;
}


static double percentile_hist(double q) {
  uint64_t want = (uint64_t) (q * (double) done_msgs), seen = 0;
  if (want >= done_msgs && done_msgs > 0) want = done_msgs - 1;
  for (uint32_t us = 0; us < HIST_MAX; us++) {
    seen += hist[us];
    if (seen > want) return us;
  }
  return HIST_MAX;
}


static int run_echo(void) {
  hist = calloc(HIST_MAX, sizeof(*hist));
  if (!connect_all()) return 1;
  for (int i = 0; i < opt.conns; i++) echo_send(&conns[i]);
  uint64_t t0 = now_ns();
  run_until(never, t0 + (uint64_t) (opt.warmup * 1e9));
  if (dead_count > 0) return 1;
  measuring = 1;
  double s0 = opt.pid > 0 ? cpu_seconds(opt.pid) : 0, c0 = cpu_seconds(-1);
  uint64_t m0 = now_ns();
  run_until(never, m0 + (uint64_t) (opt.dur * 1e9));
  uint64_t m1 = now_ns();
  double s1 = opt.pid > 0 ? cpu_seconds(opt.pid) : 0, c1 = cpu_seconds(-1);
  measuring = 0;
  double wall = (double) (m1 - m0) / 1e9;
  printf("mode=echo conns=%d size=%d dur_s=%.2f msgs=%" PRIu64 " rate=%.0f p50_us=%.0f p99_us=%.0f",
         opt.conns, opt.size, wall, done_msgs, (double) done_msgs / wall,
         percentile_hist(0.50), percentile_hist(0.99));
  if (opt.pid > 0 && s0 >= 0 && s1 >= 0)
    printf(" server_us_per_msg=%.3f server_cpu_util=%.2f",
           done_msgs ? (s1 - s0) * 1e6 / (double) done_msgs : 0.0, (s1 - s0) / wall);
  printf(" client_us_per_msg=%.3f client_cpu_util=%.2f errors=%ld\n",
         done_msgs ? (c1 - c0) * 1e6 / (double) done_msgs : 0.0, (c1 - c0) / wall, errors);
  return errors != 0 || done_msgs == 0;
}


static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
  return x < y ? -1 : x > y;
}


static int run_fanout(void) {
  if (!connect_all()) return 1;
  /* A member joins its room once its handler runs, which may be just after
   * the 101: publish until one round reaches every member (10 tries). */
  run_until(never, now_ns() + 200000000u);
  int settled = 0;
  for (int t = 0; t < 10 && !settled && dead_count == 0; t++) {
    publish();
    settled = run_until(round_done, now_ns() + 2000000000u) && dead_count == 0;
  }
  if (!settled) {
    fail("only %d of %d members had a broadcast within 2 s, 10 times", round_got, opt.conns);
    return 1;
  }
  for (int w = 0; w < 2; w++) {   /* warm-up */
    publish();
    if (!run_until(round_done, now_ns() + 30000000000u) || dead_count > 0) {
      fail("a warm-up fan-out reached %d of %d members in 30 s", round_got, opt.conns);
      return 1;
    }
  }
  uint64_t *times = calloc((size_t) opt.rounds, sizeof(*times));
  double s0 = opt.pid > 0 ? cpu_seconds(opt.pid) : 0, c0 = cpu_seconds(-1);
  for (int r = 0; r < opt.rounds; r++) {
    run_until(never, now_ns() + 20000000u);   /* a pause: the server settles */
    uint64_t t = now_ns();
    publish();
    if (!run_until(round_done, t + 30000000000u) || dead_count > 0) {
      fail("fan-out %d reached %d of %d members in 30 s", r + 1, round_got, opt.conns);
      return 1;
    }
    times[r] = now_ns() - t;
  }
  run_until(never, now_ns() + 20000000u);
  double s1 = opt.pid > 0 ? cpu_seconds(opt.pid) : 0, c1 = cpu_seconds(-1);
  qsort(times, (size_t) opt.rounds, sizeof(*times), cmp_u64);
  int n = opt.rounds;
  /* nearest rank */
  uint64_t p50 = times[(n + 1) / 2 - 1], p99 = times[(99 * n + 99) / 100 - 1];
  printf("mode=fanout conns=%d size=%d rounds=%d p50_ms=%.2f p99_ms=%.2f min_ms=%.2f max_ms=%.2f",
         opt.conns, opt.size, n, p50 / 1e6, p99 / 1e6, times[0] / 1e6, times[n - 1] / 1e6);
  if (opt.pid > 0 && s0 >= 0 && s1 >= 0)
    printf(" server_ms_per_fanout=%.2f", (s1 - s0) * 1e3 / n);
  printf(" client_ms_per_fanout=%.2f errors=%ld all_ms=", (c1 - c0) * 1e3 / n, errors);
  for (int r = 0; r < n; r++) printf("%s%.3f", r ? "," : "", times[r] / 1e6);
  printf("\n");
  free(times);
  return errors != 0;
}


static void usage(void) {
  fprintf(stderr, "usage: wsload echo|fanout HOST PORT PATH [-c CONNS] [-s BYTES] "
                  "[-d SECONDS] [-w SECONDS] [-r ROUNDS] [-p SERVER_PID]\n");
  exit(2);
}


int main(int argc, char **argv) {
  if (argc < 5) usage();
  opt.echo = strcmp(argv[1], "echo") == 0;
  if (!opt.echo && strcmp(argv[1], "fanout") != 0) usage();
  opt.host = argv[2];
  opt.port = atoi(argv[3]);
  opt.path = argv[4];
  opt.conns = opt.echo ? 64 : 2000;
  opt.size = 64;
  opt.dur = 10;
  opt.warmup = 2;
  opt.rounds = 20;
  int ch;
  optind = 5;
  while ((ch = getopt(argc, argv, "c:s:d:w:r:p:")) != -1) {
    switch (ch) {
    case 'c': opt.conns = atoi(optarg); break;
    case 's': opt.size = atoi(optarg); break;
    case 'd': opt.dur = atof(optarg); break;
    case 'w': opt.warmup = atof(optarg); break;
    case 'r': opt.rounds = atoi(optarg); break;
    case 'p': opt.pid = atoi(optarg); break;
    default: usage();
    }
  }
  if (opt.port <= 0 || opt.port > 65535 || opt.conns < 1 || opt.size < 32 ||
      opt.size > 65536 || opt.dur <= 0 || opt.warmup < 0 || opt.rounds < 1 ||
      opt.path[0] != '/')
    usage();
  struct rlimit rl;   /* as many descriptors as the hard limit allows */
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  rng ^= (uint64_t) now_ns() ^ ((uint64_t) getpid() << 32);
  conns = calloc((size_t) opt.conns, sizeof(*conns));
  msg = malloc((size_t) opt.size);
  epfd = epoll_create1(EPOLL_CLOEXEC);
  int rc = opt.echo ? run_echo() : run_fanout();
  close_all();
  for (int i = 0; i < opt.conns; i++) {
    if (conns[i].state != ST_NEW && conns[i].state != ST_DEAD) close(conns[i].fd);
    free(conns[i].rbuf);
    free(conns[i].wbuf);
  }
  free(conns);
  free(msg);
  free(hist);
  close(epfd);
  return rc;
}
