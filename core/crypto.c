/* crypto.c: SHA-256, HMAC-SHA256, secure random bytes and a constant-time
 * comparison from OpenSSL's libcrypto, for luaserve.crypto (signed cookies,
 * upload digests). Pure functions of their arguments: they run in any Lua
 * state, the main one and every pool thread's. */
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include "internal.h"

#define LS_SHA256_MT "luaserve.sha256"
/* random_bytes refuses more than this in one call (a typo, not a need). */
#define LS_RANDOM_MAX (1024 * 1024)

/* The userdata of an incremental digest; ctx is NULL once finished. */
typedef struct {
  EVP_MD_CTX *ctx;
} sha256_ud_t;


/* sha256(data): the 32-byte digest of data. */
int ls__lua_sha256(lua_State *L) {
  size_t len;
  const char *data = luaL_checklstring(L, 1, &len);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  if (!EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL))
    return luaL_error(L, "sha256: libcrypto failed");
  lua_pushlstring(L, (const char *)md, mdlen);
  return 1;
}


/* hmac_sha256(key, data): the 32-byte HMAC-SHA256 of data under key. */
int ls__lua_hmac_sha256(lua_State *L) {
  size_t klen, len;
  const char *key = luaL_checklstring(L, 1, &klen);
  const char *data = luaL_checklstring(L, 2, &len);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  /* HMAC() takes a NULL key as "no key": an empty key is a valid one. */
  static const unsigned char empty[1] = {0};
  if (HMAC(EVP_sha256(), klen ? (const void *)key : empty, (int)klen,
           (const unsigned char *)data, len, md, &mdlen) == NULL)
    return luaL_error(L, "hmac_sha256: libcrypto failed");
  lua_pushlstring(L, (const char *)md, mdlen);
  return 1;
}


/* sha256_new(): a digest fed piece by piece: d:update(data) (returns d),
 * d:digest() (the 32 bytes; the digest is finished then). */
int ls__lua_sha256_new(lua_State *L) {
  sha256_ud_t *ud = lua_newuserdata(L, sizeof(*ud));
  ud->ctx = NULL;
  luaL_getmetatable(L, LS_SHA256_MT);
  lua_setmetatable(L, -2);
  ud->ctx = EVP_MD_CTX_new();
  if (ud->ctx == NULL || !EVP_DigestInit_ex(ud->ctx, EVP_sha256(), NULL))
    return luaL_error(L, "sha256_new: libcrypto failed");
  return 1;
}


static EVP_MD_CTX *check_sha256(lua_State *L) {
  sha256_ud_t *ud = luaL_checkudata(L, 1, LS_SHA256_MT);
  if (ud->ctx == NULL)
    luaL_error(L, "sha256: the digest is finished (digest() was called)");
  return ud->ctx;
}


static int sha256_update(lua_State *L) {
  EVP_MD_CTX *ctx = check_sha256(L);
  size_t len;
  const char *data = luaL_checklstring(L, 2, &len);
  if (!EVP_DigestUpdate(ctx, data, len))
    return luaL_error(L, "sha256: libcrypto failed");
  lua_settop(L, 1);
  return 1;
}


static int sha256_digest(lua_State *L) {
  EVP_MD_CTX *ctx = check_sha256(L);
  sha256_ud_t *ud = lua_touserdata(L, 1);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  int ok = EVP_DigestFinal_ex(ctx, md, &mdlen);
  EVP_MD_CTX_free(ctx);
  ud->ctx = NULL;
  if (!ok)
    return luaL_error(L, "sha256: libcrypto failed");
  lua_pushlstring(L, (const char *)md, mdlen);
  return 1;
}


static int sha256_gc(lua_State *L) {
  sha256_ud_t *ud = luaL_checkudata(L, 1, LS_SHA256_MT);
  if (ud->ctx)
    EVP_MD_CTX_free(ud->ctx);
  ud->ctx = NULL;
  return 0;
}


/* random_bytes(n): n bytes from OpenSSL's CSPRNG (session ids, secrets). */
int ls__lua_random_bytes(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  if (n < 0 || n > LS_RANDOM_MAX)
    return luaL_argerror(L, 1, "between 0 and 1048576 bytes");
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  while (n > 0) {
    size_t k = n < LUAL_BUFFERSIZE ? (size_t)n : LUAL_BUFFERSIZE;
    char *p = luaL_prepbuffer(&b);
    if (RAND_bytes((unsigned char *)p, (int)k) != 1)
      return luaL_error(L, "random_bytes: the CSPRNG failed");
    luaL_addsize(&b, k);
    n -= (lua_Integer)k;
  }
  luaL_pushresult(&b);
  return 1;
}


/* const_equal(a, b): a == b in time that depends on the length only (MACs
 * and tokens compared without leaking where they differ). */
int ls__lua_const_equal(lua_State *L) {
  size_t alen, blen;
  const char *a = luaL_checklstring(L, 1, &alen);
  const char *b = luaL_checklstring(L, 2, &blen);
  lua_pushboolean(L, alen == blen && CRYPTO_memcmp(a, b, alen) == 0);
  return 1;
}


/* to_hex(data): lower-case hex digits of data. */
int ls__lua_to_hex(lua_State *L) {
  static const char digits[] = "0123456789abcdef";
  size_t len;
  const unsigned char *s =
      (const unsigned char *)luaL_checklstring(L, 1, &len);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (size_t i = 0; i < len; i++) {
    luaL_addchar(&b, digits[s[i] >> 4]);
    luaL_addchar(&b, digits[s[i] & 15]);
  }
  luaL_pushresult(&b);
  return 1;
}


static const luaL_Reg sha256_methods[] = {
  {"update", sha256_update},
  {"digest", sha256_digest},
  {NULL, NULL},
};


void ls__crypto_open(lua_State *L) {
  ls__new_class(L, LS_SHA256_MT, sha256_methods, sha256_gc);
}
