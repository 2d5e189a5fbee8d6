/* buf.c: a growable byte buffer (ls_buf_t). */
#include <stdlib.h>
#include <string.h>

#include "internal.h"


int ls__buf_reserve(ls_buf_t *b, size_t n) {
  if (n <= (size_t)(b->cap - b->len))
    return 0;
  if (n > (size_t)LS_BUF_MAX - b->len)
    return UV_ENOMEM;   /* past the buffer's 32-bit size */
  size_t want = (size_t)b->len + n;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < want)
    cap *= 2;
  if (cap > LS_BUF_MAX)
    cap = LS_BUF_MAX;
  char *p = realloc(b->data, cap);
  if (p == NULL)
    return UV_ENOMEM;
  b->data = p;
  b->cap = (uint32_t)cap;
  return 0;
}


int ls__buf_append(ls_buf_t *b, const char *p, size_t n) {
  if (n == 0)
    return 0;
  if (ls__buf_reserve(b, n))
    return UV_ENOMEM;
  memcpy(b->data + b->len, p, n);
  b->len += (uint32_t)n;
  return 0;
}


char *ls__put_uint(char *p, uint64_t v) {
  char tmp[24];
  int n = 0;
  do {
    tmp[n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v);
  while (n)
    *p++ = tmp[--n];
  return p;
}


void ls__buf_free(ls_buf_t *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}
