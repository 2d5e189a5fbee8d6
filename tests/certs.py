#!/usr/bin/env python3
"""Test certificates, made with the openssl command line (never committed):
a CA and what it signs, plus a self-signed and an expired certificate.

    python3 tests/certs.py DIR      # writes DIR/*.pem, prints DIR
    certs.make(DIR)                 # from a test: returns a dict of paths

Files (EC P-256 keys, fast to make):
  ca.pem ca.key            the test CA
  server.pem server.key    CN=localhost, SAN DNS:localhost, IP:127.0.0.1 (by the CA)
  chain.pem                server.pem then ca.pem
  other.pem other.key      CN=other.example, SAN DNS:other.example only (by the CA)
  expired.pem expired.key  CN=localhost, expired yesterday (by the CA)
  client.pem client.key    CN=test-client, O=luaserve tests (by the CA)
  self.pem self.key        CN=localhost, self-signed
  enc.key                  server.key encrypted with the password "secret"
  garbage.pem              not PEM at all
"""
import os
import subprocess
import sys


def _run(*args, cwd):
    subprocess.run(["openssl"] + list(args), cwd=cwd, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _key_and_csr(d, name, subj):
    _run("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", name + ".key", "-out", name + ".csr", "-subj", subj,
         cwd=d)


def _sign(d, name, days, ext):
    with open(os.path.join(d, name + ".ext"), "w") as f:
        f.write(ext)
    _run("x509", "-req", "-in", name + ".csr", "-CA", "ca.pem", "-CAkey", "ca.key",
         "-CAcreateserial", "-days", str(days), "-out", name + ".pem",
         "-extfile", name + ".ext", cwd=d)


def make(d):
    os.makedirs(d, exist_ok=True)
    _run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "30",
         "-subj", "/CN=luaserve test CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    leaf = "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n"
    _key_and_csr(d, "server", "/CN=localhost")
    _sign(d, "server", 30, leaf + "extendedKeyUsage=serverAuth\n"
          "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _key_and_csr(d, "other", "/CN=other.example")
    _sign(d, "other", 30, leaf + "extendedKeyUsage=serverAuth\n"
          "subjectAltName=DNS:other.example\n")
    _key_and_csr(d, "expired", "/CN=localhost")
    _sign(d, "expired", -1, leaf + "extendedKeyUsage=serverAuth\n"
          "subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    _key_and_csr(d, "client", "/CN=test-client/O=luaserve tests")
    _sign(d, "client", 30, leaf + "extendedKeyUsage=clientAuth\n")
    _run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", "self.key", "-out", "self.pem", "-days", "30",
         "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", cwd=d)
    _run("pkey", "-in", "server.key", "-aes256", "-passout", "pass:secret",
         "-out", "enc.key", cwd=d)
    with open(os.path.join(d, "chain.pem"), "w") as out:
        for name in ("server.pem", "ca.pem"):
            with open(os.path.join(d, name)) as f:
                out.write(f.read())
    with open(os.path.join(d, "garbage.pem"), "w") as f:
        f.write("this is not a certificate\n")
    names = ["ca", "server", "other", "expired", "client", "self"]
    paths = {}
    for n in names:
        paths[n] = os.path.join(d, n + ".pem")
        paths[n + "_key"] = os.path.join(d, n + ".key")
    paths.update(chain=os.path.join(d, "chain.pem"), enc_key=os.path.join(d, "enc.key"),
                 garbage=os.path.join(d, "garbage.pem"), dir=d)
    return paths


if __name__ == "__main__":
    make(sys.argv[1])
    print(sys.argv[1])
