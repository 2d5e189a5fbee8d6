/* tls.c: TLS on OpenSSL 3. Contexts for the server (certificate chain,
 * key, client certificates, ALPN) and the client (the system CA store or a
 * given one, client certificates), made from Lua and held by userdata; and
 * the filter a stream puts between its socket and its owner (stream.c):
 * an SSL object on two memory BIOs, fed with bytes from the socket and
 * drained of bytes for it, so it never touches the socket itself.
 *
 * Only TLS 1.2 and 1.3, a modern cipher list, renegotiation off, session
 * tickets on (OpenSSL's default keys, per context). OpenSSL's error queue
 * is per thread: each call below clears it first and reads it at once. A
 * filter belongs to one stream; a context may be shared by any number. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <arpa/inet.h>
#include <sys/stat.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "internal.h"

#define LS_TLS_CTX_MT "luaserve.tls_context"

/* TLS 1.2 suites (1.3 keeps OpenSSL's): forward secrecy and AEAD only
 * (Mozilla's "intermediate" list). */
static const char ciphers12[] =
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
    "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384";

/* What the server offers through ALPN, in wire format ("h2" goes first
 * here once HTTP/2 exists). */
static const unsigned char server_alpn[] = "\x08http/1.1";

struct ls_tls_s {
  SSL *ssl;
  BIO *rbio;                /* bytes from the socket, read by SSL */
  BIO *wbio;                /* bytes SSL wrote, for the socket */
  char reason[160];         /* the last failure, "" if none */
};

typedef struct {
  SSL_CTX *ctx;
} ctx_ud_t;


/* ---- errors --------------------------------------------------------------- */

/* The reason of OpenSSL's last queued error, or `def`. */
static const char *ssl_reason(const char *def) {
  unsigned long e = ERR_peek_last_error();
  const char *r = e ? ERR_reason_error_string(e) : NULL;
  return r ? r : def;
}


/* Does a reason in OpenSSL's error queue contain w1 or w2? (Empties it.) */
static int queue_mentions(const char *w1, const char *w2) {
  unsigned long e;
  int found = 0;
  while ((e = ERR_get_error()) != 0) {
    const char *r = ERR_reason_error_string(e);
    if (r && (strstr(r, w1) || strstr(r, w2)))
      found = 1;
  }
  return found;
}


/* Note why t failed, from the verification result or the error queue. */
static void tls_fail(ls_tls_t *t, const char *def) {
  long vr = SSL_get_verify_result(t->ssl);
  if (vr == X509_V_ERR_HOSTNAME_MISMATCH || vr == X509_V_ERR_IP_ADDRESS_MISMATCH)
    snprintf(t->reason, sizeof(t->reason), "hostname mismatch");
  else if (vr != X509_V_OK)
    snprintf(t->reason, sizeof(t->reason), "certificate verify failed: %s",
             X509_verify_cert_error_string(vr));
  else
    snprintf(t->reason, sizeof(t->reason), "%s", ssl_reason(def));
  ERR_clear_error();
}


/* ---- the filter ----------------------------------------------------------- */

ls_tls_t *ls__tls_new(void *ctx, int server, const char *name,
                      int check_name) {
  ls_tls_t *t = calloc(1, sizeof(*t));
  if (t == NULL)
    return NULL;
  ERR_clear_error();
  t->ssl = SSL_new(ctx);
  t->rbio = BIO_new(BIO_s_mem());
  t->wbio = BIO_new(BIO_s_mem());
  if (t->ssl == NULL || t->rbio == NULL || t->wbio == NULL) {
    SSL_free(t->ssl);
    BIO_free(t->rbio);
    BIO_free(t->wbio);
    free(t);
    return NULL;
  }
  /* An empty input BIO means "more to come", not the end of the stream. */
  BIO_set_mem_eof_return(t->rbio, -1);
  BIO_set_mem_eof_return(t->wbio, -1);
  SSL_set_bio(t->ssl, t->rbio, t->wbio);
  if (server) {
    SSL_set_accept_state(t->ssl);
  } else {
    SSL_set_connect_state(t->ssl);
    if (name && *name) {
      unsigned char ip[16];
      int is_ip = inet_pton(AF_INET, name, ip) == 1 ||
                  inet_pton(AF_INET6, name, ip) == 1;
      if (!is_ip)
        SSL_set_tlsext_host_name(t->ssl, name);   /* SNI: names only */
      if (check_name) {
        X509_VERIFY_PARAM *p = SSL_get0_param(t->ssl);
        X509_VERIFY_PARAM_set_hostflags(p, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
        if (is_ip)
          X509_VERIFY_PARAM_set1_ip_asc(p, name);
        else
          X509_VERIFY_PARAM_set1_host(p, name, 0);
      }
    }
  }
  return t;
}


void ls__tls_free(ls_tls_t *t) {
  SSL_free(t->ssl);   /* and both BIOs */
  free(t);
}


int ls__tls_feed(ls_tls_t *t, const char *data, size_t len) {
  return BIO_write(t->rbio, data, (int)len) == (int)len ? 0 : UV_ENOMEM;
}


int ls__tls_handshake(ls_tls_t *t) {
  ERR_clear_error();
  int r = SSL_do_handshake(t->ssl);
  if (r == 1)
    return 1;
  int e = SSL_get_error(t->ssl, r);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
    return 0;
  tls_fail(t, e == SSL_ERROR_ZERO_RETURN ? "closed" : "handshake failed");
  return LS_ETLS;
}


/* The error queue is empty here: every failure path below reads and
 * clears it (tls_fail), so the hot calls need not clear it first. */
int ls__tls_read(ls_tls_t *t, char *buf, size_t cap) {
  int n = SSL_read(t->ssl, buf, (int)cap);
  if (n > 0)
    return n;
  int e = SSL_get_error(t->ssl, n);
  if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
    return 0;
  if (e == SSL_ERROR_ZERO_RETURN)
    return UV_EOF;
  tls_fail(t, "read failed");
  return LS_ETLS;
}


int ls__tls_write(ls_tls_t *t, const char *data, size_t len) {
  /* A memory BIO never fills: one call writes all. */
  int n = SSL_write(t->ssl, data, (int)len);
  if (n == (int)len)
    return 0;
  tls_fail(t, "write failed");
  return LS_ETLS;
}


int ls__tls_output(ls_tls_t *t, ls_buf_t *out) {
  size_t n = BIO_ctrl_pending(t->wbio);
  if (n == 0)
    return 0;
  if (ls__buf_reserve(out, n))
    return UV_ENOMEM;
  /* One read takes all: a memory BIO read in pieces moves its rest. */
  int got = BIO_read(t->wbio, out->data + out->len, (int)n);
  if (got > 0)
    out->len += (size_t)got;
  return 0;
}


int ls__tls_pending(ls_tls_t *t) {
  return SSL_pending(t->ssl) > 0 || BIO_ctrl_pending(t->rbio) > 0;
}


void ls__tls_close_notify(ls_tls_t *t) {
  ERR_clear_error();
  if (SSL_is_init_finished(t->ssl) && !(SSL_get_shutdown(t->ssl) & SSL_SENT_SHUTDOWN))
    SSL_shutdown(t->ssl);
  ERR_clear_error();
}


const char *ls__tls_reason(const ls_tls_t *t) {
  return t->reason;
}


void ls__tls_push_info(lua_State *L, ls_tls_t *t) {
  lua_createtable(L, 0, 5);
  lua_pushstring(L, SSL_get_version(t->ssl));
  lua_setfield(L, -2, "version");
  lua_pushstring(L, SSL_get_cipher_name(t->ssl));
  lua_setfield(L, -2, "cipher");
  const unsigned char *alpn;
  unsigned alen = 0;
  SSL_get0_alpn_selected(t->ssl, &alpn, &alen);
  if (alen) {
    lua_pushlstring(L, (const char *)alpn, alen);
    lua_setfield(L, -2, "alpn");
  }
  X509 *peer = SSL_get1_peer_certificate(t->ssl);
  if (peer) {
    BIO *m = BIO_new(BIO_s_mem());
    if (m) {
      X509_NAME_print_ex(m, X509_get_subject_name(peer), 0, XN_FLAG_RFC2253);
      char *p;
      long n = BIO_get_mem_data(m, &p);
      lua_pushlstring(L, p, (size_t)n);
      lua_setfield(L, -2, "peer_subject");
      BIO_free(m);
    }
    lua_pushboolean(L, SSL_get_verify_result(t->ssl) == X509_V_OK);
    lua_setfield(L, -2, "peer_verified");
    X509_free(peer);
  }
}


/* ---- contexts ------------------------------------------------------------- */

/* A key's password from the option, never from the terminal: without one,
 * an encrypted key fails to load. */
static int password_cb(char *buf, int size, int rwflag, void *u) {
  (void)rwflag;
  const char *pw = u;
  if (pw == NULL)
    return 0;
  int n = (int)strlen(pw);
  if (n > size)
    return 0;
  memcpy(buf, pw, (size_t)n);
  return n;
}


static int alpn_select(SSL *ssl, const unsigned char **out,
                       unsigned char *outlen, const unsigned char *in,
                       unsigned int inlen, void *arg) {
  (void)ssl;
  (void)arg;
  if (SSL_select_next_proto((unsigned char **)out, outlen, server_alpn,
                            sizeof(server_alpn) - 1, in, inlen) ==
      OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_OK;
  return SSL_TLSEXT_ERR_NOACK;   /* no common protocol: go on without */
}


static SSL_CTX *ctx_new(int server) {
  SSL_CTX *ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  if (ctx == NULL)
    return NULL;
  SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
  SSL_CTX_set_mode(ctx, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  SSL_CTX_set_cipher_list(ctx, ciphers12);
  return ctx;
}


/* Push nil, "<file>: <reason>", what; returns 3. */
static int load_error(lua_State *L, const char *file, const char *reason,
                      const char *what) {
  lua_pushnil(L);
  lua_pushfstring(L, "%s: %s", file, reason);
  lua_pushstring(L, what);
  ERR_clear_error();
  return 3;
}


/* A file must be readable before OpenSSL gets it: its own message for a
 * missing file says less than errno does. */
static const char *unreadable(const char *file) {
  struct stat st;
  if (stat(file, &st) != 0)
    return strerror(errno);
  if (S_ISDIR(st.st_mode))
    return "is a directory, not a PEM file";
  FILE *f = fopen(file, "r");
  if (f == NULL)
    return strerror(errno);
  fclose(f);
  return NULL;
}


/* Whether a PEM key file says it is encrypted ("BEGIN ENCRYPTED PRIVATE
 * KEY", or a legacy "Proc-Type: 4,ENCRYPTED"). A wrong password does not
 * always fail as a decryption: about one time in 256 the garbage it
 * gives passes the padding check, and the error is the parse's. */
static int pem_encrypted(const char *file) {
  FILE *f = fopen(file, "r");
  if (f == NULL)
    return 0;
  char line[256];
  int found = 0;
  for (int i = 0; i < 8 && !found && fgets(line, sizeof(line), f); i++)
    found = strstr(line, "ENCRYPTED") != NULL;
  fclose(f);
  return found;
}


static const char *opt_string(lua_State *L, const char *name) {
  lua_getfield(L, 1, name);
  const char *v = lua_isstring(L, -1) ? lua_tostring(L, -1) : NULL;
  lua_pop(L, 1);   /* the string stays in the options table */
  return v;
}


static int push_ctx(lua_State *L, SSL_CTX *ctx) {
  ctx_ud_t *ud = lua_newuserdata(L, sizeof(*ud));
  ud->ctx = ctx;
  luaL_getmetatable(L, LS_TLS_CTX_MT);
  lua_setmetatable(L, -2);
  return 1;
}


/* Load a certificate chain and its key into ctx. 0, or pushes the error
 * (3 values) and returns 3. */
static int load_identity(lua_State *L, SSL_CTX *ctx, const char *cert,
                         const char *key, const char *password,
                         const char *cert_what, const char *key_what) {
  const char *why;
  if ((why = unreadable(cert)) != NULL)
    return load_error(L, cert, why, cert_what);
  if ((why = unreadable(key)) != NULL)
    return load_error(L, key, why, key_what);
  ERR_clear_error();
  if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1)
    return load_error(L, cert, ssl_reason("not a PEM certificate"), cert_what);
  SSL_CTX_set_default_passwd_cb(ctx, password_cb);
  SSL_CTX_set_default_passwd_cb_userdata(ctx, (void *)password);
  int ok = SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM);
  SSL_CTX_set_default_passwd_cb_userdata(ctx, NULL);
  if (ok != 1) {
    unsigned long e = ERR_peek_last_error();
    const char *r = ssl_reason("not a PEM private key");
    if (ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH)
      r = "the key does not match the certificate";
    else if (queue_mentions("decrypt", "password") || pem_encrypted(key))
      r = password ? "cannot decrypt the key: wrong password"
                   : "the key is encrypted: give its password";
    return load_error(L, key, r, key_what);
  }
  if (SSL_CTX_check_private_key(ctx) != 1)
    return load_error(L, key, "the key does not match the certificate", key_what);
  return 0;
}


/* tls_server_context{cert=, key=, password=, ca=, verify="none"|
 * "optional"|"required"}: a context, or nil, "<file>: <reason>", which
 * ("cert", "key" or "ca"). */
int ls__lua_tls_server_context(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  const char *cert = opt_string(L, "cert");
  const char *key = opt_string(L, "key");
  const char *password = opt_string(L, "password");
  const char *ca = opt_string(L, "ca");
  const char *verify = opt_string(L, "verify");
  if (cert == NULL)
    return luaL_error(L, "tls_server_context: cert is required");
  if (key == NULL)
    key = cert;   /* one PEM file may hold both */
  int mode = SSL_VERIFY_NONE;
  if (verify == NULL || strcmp(verify, "none") == 0)
    mode = SSL_VERIFY_NONE;
  else if (strcmp(verify, "optional") == 0)
    mode = SSL_VERIFY_PEER;
  else if (strcmp(verify, "required") == 0)
    mode = SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT;
  else
    return luaL_error(L, "tls_server_context: verify must be none, optional "
                      "or required");
  if (mode != SSL_VERIFY_NONE && ca == NULL)
    return luaL_error(L, "tls_server_context: verifying clients needs ca");
  SSL_CTX *ctx = ctx_new(1);
  if (ctx == NULL)
    return ls__push_error(L, UV_ENOMEM);
  int n = load_identity(L, ctx, cert, key, password, "cert", "key");
  if (n) {
    SSL_CTX_free(ctx);
    return n;
  }
  if (ca) {
    const char *why = unreadable(ca);
    ERR_clear_error();
    STACK_OF(X509_NAME) *names = why ? NULL : SSL_load_client_CA_file(ca);
    if (why || names == NULL ||
        SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
      SSL_CTX_free(ctx);
      return load_error(L, ca, why ? why : ssl_reason("no certificates in it"), "ca");
    }
    SSL_CTX_set_client_CA_list(ctx, names);
  }
  SSL_CTX_set_verify(ctx, mode, NULL);
  /* Resumed sessions must belong to this server (required with client
   * verification); idle connections give their buffers back. */
  SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"luaserve", 8);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
  ERR_clear_error();   /* the filters' calls count on an empty queue */
  return push_ctx(L, ctx);
}


/* tls_client_context{verify=true, ca_file=, cert_file=, key_file=,
 * password=, alpn="http/1.1"}: a context, or nil, "<file>: <reason>". */
int ls__lua_tls_client_context(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "verify");
  int verify = lua_isnil(L, -1) || lua_toboolean(L, -1);
  lua_pop(L, 1);
  const char *ca = opt_string(L, "ca_file");
  const char *cert = opt_string(L, "cert_file");
  const char *key = opt_string(L, "key_file");
  const char *password = opt_string(L, "password");
  const char *alpn = opt_string(L, "alpn");
  SSL_CTX *ctx = ctx_new(0);
  if (ctx == NULL)
    return ls__push_error(L, UV_ENOMEM);
  ERR_clear_error();
  if (ca) {
    const char *why = unreadable(ca);
    if (why || SSL_CTX_load_verify_locations(ctx, ca, NULL) != 1) {
      SSL_CTX_free(ctx);
      return load_error(L, ca, why ? why : ssl_reason("no certificates in it"),
                        "ca_file");
    }
  } else if (verify) {
    SSL_CTX_set_default_verify_paths(ctx);   /* Debian's ca-certificates */
  }
  if (cert) {
    int n = load_identity(L, ctx, cert, key ? key : cert, password,
                          "cert_file", "key_file");
    if (n) {
      SSL_CTX_free(ctx);
      return n;
    }
  }
  if (alpn) {
    size_t len = strlen(alpn);
    unsigned char wire[256];
    if (len == 0 || len > 255)
      return luaL_error(L, "tls_client_context: bad alpn");
    wire[0] = (unsigned char)len;
    memcpy(wire + 1, alpn, len);
    SSL_CTX_set_alpn_protos(ctx, wire, (unsigned)len + 1);
  }
  SSL_CTX_set_verify(ctx, verify ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
  ERR_clear_error();
  return push_ctx(L, ctx);
}


void *ls__tls_check_context(lua_State *L, int idx) {
  ctx_ud_t *ud = luaL_checkudata(L, idx, LS_TLS_CTX_MT);
  return ud->ctx;
}


void ls__tls_context_ref(void *ctx) {
  SSL_CTX_up_ref(ctx);
}


void ls__tls_context_unref(void *ctx) {
  SSL_CTX_free(ctx);
}


static int ctx_gc(lua_State *L) {
  ctx_ud_t *ud = luaL_checkudata(L, 1, LS_TLS_CTX_MT);
  if (ud->ctx)
    SSL_CTX_free(ud->ctx);
  ud->ctx = NULL;
  return 0;
}


void ls__tls_open(lua_State *L) {
  ls__new_class(L, LS_TLS_CTX_MT, NULL, ctx_gc);
}
