/* buf.c: a growable byte buffer (ls_buf_t). */
#include <stdlib.h>
#include <string.h>

#include "internal.h"


int ls__buf_reserve(ls_buf_t *b, size_t n) {
  if (b->len + n <= b->cap)
    return 0;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->len + n)
    cap *= 2;
  char *p = realloc(b->data, cap);
  if (p == NULL)
    return UV_ENOMEM;
  b->data = p;
  b->cap = cap;
  return 0;
}


int ls__buf_append(ls_buf_t *b, const char *p, size_t n) {
  if (n == 0)
    return 0;
  if (ls__buf_reserve(b, n))
    return UV_ENOMEM;
  memcpy(b->data + b->len, p, n);
  b->len += n;
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
