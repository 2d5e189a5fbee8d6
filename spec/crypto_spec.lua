-- spec/crypto_spec.lua: luaserve.crypto: SHA-256 and HMAC-SHA256 against
-- published vectors (FIPS 180-2, RFC 4231), piecewise digests, random
-- tokens, the constant-time comparison, and the same in sync functions.

local crypto = require "luaserve.crypto"
local testing = require "luaserve.testing"
local luaserve = require "luaserve"


describe("luaserve.crypto", function()
  it("computes SHA-256", function()
    assert.equals("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
      crypto.sha256("abc", "hex"))
    assert.equals("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
      crypto.sha256("", "hex"))
    assert.equals(32, #crypto.sha256("abc"))
    assert.equals("ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0=",
      crypto.sha256("abc", "base64"))
    assert.equals("ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0",
      crypto.sha256("abc", "base64url"))
  end)

  it("computes HMAC-SHA256 (RFC 4231 cases 1 and 2, an empty key)", function()
    assert.equals("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
      crypto.hmac_sha256(string.rep("\11", 20), "Hi There", "hex"))
    assert.equals("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
      crypto.hmac_sha256("Jefe", "what do ya want for nothing?", "hex"))
    assert.equals("b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad",
      crypto.hmac_sha256("", "", "hex"))
  end)

  it("digests piece by piece as in one go, binary safe", function()
    local data = {}
    for i = 0, 255 do data[#data + 1] = string.char(i):rep(i + 1) end
    local whole = table.concat(data)
    local d = crypto.sha256_stream()
    for i = 1, #data do assert.equals(d, d:update(data[i])) end
    assert.equals(#whole, d.size)
    assert.equals(crypto.sha256(whole, "hex"), d:digest("hex"))
    assert.has_error(function() d:update("more") end,
      "sha256: the digest is finished (digest() was called)")
  end)

  it("makes random bytes and tokens", function()
    local a, b = crypto.random_bytes(32), crypto.random_bytes(32)
    assert.equals(32, #a)
    assert.are_not.equal(a, b)
    assert.matches("^[%w_%-]+$", crypto.token())
    assert.equals(43, #crypto.token())   -- 32 bytes, base64url without padding
    assert.equals(22, #crypto.token(16))
    assert.has_error(function() crypto.random_bytes(-1) end)
  end)

  it("compares in constant time", function()
    assert.is_true(crypto.equal("abc", "abc"))
    assert.is_false(crypto.equal("abc", "abd"))
    assert.is_false(crypto.equal("abc", "abcd"))
    assert.is_false(crypto.equal("abc", nil))
  end)

  it("raises on misuse", function()
    assert.has_error(function() crypto.sha256(42) end, "sha256: expected a string, got number")
    assert.has_error(function() crypto.sha256("x", "base32") end,
      "unknown encoding 'base32' (hex, base64, base64url or raw)")
  end)
end)


describe("luaserve.crypto in sync functions", function()
  local client
  setup(function()
    client = testing.client("spec/fixtures/forms_sync_app.lua", { threads = 2 })
  end)
  teardown(function() client:close() end)

  it("gives the same digests in a pool thread", testing.async(function()
    local sha, mac, n, eq = luaserve.await(client.app.fns.digests("abc", "Jefe"))
    assert.equals(crypto.sha256("abc", "hex"), sha)
    assert.equals(crypto.hmac_sha256("Jefe", "abc", "hex"), mac)
    assert.equals(16, n)
    assert.is_true(eq)
  end))
end)
