// A stand-in for an auth provider, on 127.0.0.1: its JWKS endpoint (whose keys, answers and
// speed the tests script) and keys that sign real tokens, made with node:crypto at test time.

import crypto from "node:crypto";
import http from "node:http";

const b64u = (data) => Buffer.from(data).toString("base64url");

/** A signing key of `kind` ("rsa" RS256, "ec" ES256, "ed" EdDSA) and its public JWK. */
export function makeKey(kind, kid) {
  const pair =
    kind === "rsa"
      ? crypto.generateKeyPairSync("rsa", { modulusLength: 2048 })
      : kind === "ec"
        ? crypto.generateKeyPairSync("ec", { namedCurve: "P-256" })
        : crypto.generateKeyPairSync("ed25519");
  const alg = { rsa: "RS256", ec: "ES256", ed: "EdDSA" }[kind];
  const jwk = { ...pair.publicKey.export({ format: "jwk" }), kid, alg, use: "sig" };
  /** A token with these claims (and header fields), signed with this key. */
  const sign = (claims, header = {}) => {
    const message = `${b64u(JSON.stringify({ alg, typ: "JWT", kid, ...header }))}.${b64u(JSON.stringify(claims))}`;
    const data = Buffer.from(message);
    const signature =
      alg === "RS256"
        ? crypto.sign("sha256", data, pair.privateKey)
        : alg === "ES256"
          ? crypto.sign("sha256", data, { key: pair.privateKey, dsaEncoding: "ieee-p1363" })
          : crypto.sign(null, data, pair.privateKey);
    return `${message}.${b64u(signature)}`;
  };
  return { kid, alg, jwk, sign };
}

/** An HS256 token with these claims, signed with a shared secret. */
export function signHs256(secret, claims) {
  const message = `${b64u(JSON.stringify({ alg: "HS256", typ: "JWT" }))}.${b64u(JSON.stringify(claims))}`;
  return `${message}.${crypto.createHmac("sha256", secret).update(message).digest("base64url")}`;
}

/**
 * The JWKS server. `mode`: "ok" (200 with the published keys), "down" (500), "hang" (never
 * answers). Counts every request, whatever the answer.
 */
export async function startJwksServer() {
  const state = { keys: [], mode: "ok", fetches: 0, lastFetchAt: 0 };
  const hanging = new Set();
  const server = http.createServer((req, res) => {
    state.fetches += 1;
    state.lastFetchAt = Date.now();
    if (state.mode === "hang") {
      hanging.add(res);
      return;
    }
    if (state.mode === "down") {
      res.writeHead(500, { "content-type": "text/plain" });
      return res.end("down");
    }
    res.writeHead(200, { "content-type": "application/json", "cache-control": "public, max-age=600" });
    res.end(JSON.stringify({ keys: state.keys }));
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const url = `http://127.0.0.1:${server.address().port}/.well-known/jwks.json`;
  return {
    url,
    state,
    publish(keys) {
      state.keys = keys.map((key) => key.jwk);
    },
    async close() {
      for (const res of hanging) res.destroy();
      server.closeAllConnections?.();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
