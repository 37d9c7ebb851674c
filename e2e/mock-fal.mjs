// In-process mock of the fal.ai upstream, used as FAL_PROXY_UPSTREAM by the e2e suite.
//
// The proxy maps a validated target `https://HOST/PATH?QUERY` to
// `<mock url>/HOST/PATH?QUERY`, so every route here starts with the fal host name.
// Every request that reaches the mock is recorded in `requests` (in arrival order).

import http from "node:http";
import { createHash, randomUUID } from "node:crypto";
import { deflateSync, gzipSync } from "node:zlib";

/** Deterministic pseudo-random bytes (so large bodies are not trivially compressible). */
export function patternBytes(size, seed = 1) {
  const buf = Buffer.allocUnsafe(size);
  let x = (seed * 2654435761) >>> 0 || 1;
  let i = 0;
  for (; i + 4 <= size; i += 4) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    buf.writeUInt32LE(x, i);
  }
  for (; i < size; i++) buf[i] = i & 0xff;
  return buf;
}

export function sha256(buf) {
  return createHash("sha256").update(buf).digest("hex");
}

export const BIG_RESPONSE_SIZE = 10 * 1024 * 1024;
export const SLOW_DELAY_MS = 3000;
export const SSE_EVENT_COUNT = 6;
export const SSE_INTERVAL_MS = 250;

// fal's validation error shape (FastAPI / pydantic).
export const VALIDATION_ERROR_BODY = {
  detail: [{ loc: ["body", "prompt"], msg: "field required", type: "value_error.missing" }],
};
// Served gzip-compressed (content-encoding: gzip) by fal.run/fal-ai/gzip-response.
export const GZIP_RESPONSE_BODY = { images: [{ url: "https://v3.fal.media/files/mock/gz.png" }], text: "z".repeat(5000) };
export const SERVER_ERROR_BODY = { detail: "Internal Server Error", error_type: "internal_error" };

/**
 * A real PNG (a colour gradient, `width` x `height`, 8-bit RGB), made here so no test needs
 * a file or the network. The mock serves it for fal's CDN URLs (`/v3.fal.media/...`).
 */
export function gradientPng(width = 96, height = 64) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc32 = (buf) => {
    let c = 0xffffffff;
    for (const byte of buf) c = crcTable[(c ^ byte) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const head = Buffer.alloc(8);
    head.writeUInt32BE(data.length, 0);
    head.write(type, 4, "ascii");
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(Buffer.concat([head.subarray(4), data])), 0);
    return Buffer.concat([head, data, crc]);
  };
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 2, 0, 0, 0], 8); // 8-bit, RGB, deflate, no filter method, no interlace
  const rows = Buffer.alloc((width * 3 + 1) * height);
  for (let y = 0; y < height; y++) {
    const row = y * (width * 3 + 1); // each row starts with filter type 0
    for (let x = 0; x < width; x++) {
      rows[row + 1 + x * 3] = Math.round((255 * x) / (width - 1));
      rows[row + 2 + x * 3] = Math.round((255 * y) / (height - 1));
      rows[row + 3 + x * 3] = 200;
    }
  }
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", deflateSync(rows)),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

/** The PNG the mock serves for every `https://v3.fal.media/files/...png` result URL. */
export const MOCK_PNG = gradientPng();

const BODY_KEEP_LIMIT = 1024 * 1024; // keep raw bodies up to 1 MiB for inspection

function json(res, status, body, headers = {}) {
  const data = Buffer.from(JSON.stringify(body));
  res.writeHead(status, {
    "content-type": "application/json",
    "content-length": data.length,
    ...headers,
  });
  res.end(data);
}

function parseJson(buf) {
  if (!buf || buf.length === 0) return undefined;
  try {
    return JSON.parse(buf.toString("utf8"));
  } catch {
    return undefined;
  }
}

/**
 * Start the mock. Resolves to
 * `{ url, port, requests, reset(), close(), tokens, uploads, multipartUploads, bigResponseSha256 }`.
 *
 * Each recorded request: `{ method, path /* path+query *\/, pathname, query, headers
 * /* lower-cased, as received *\/, rawHeaders, bodyLength, sha256, body /* Buffer if
 * <= 1 MiB *\/, json, complete, aborted, events /* SSE send times (ms epoch) *\/ }`.
 */
export async function startMockFal() {
  const requests = [];
  const queue = new Map(); // request_id -> { endpoint, app, input, statusCalls, cancelled }
  const tokens = [];
  const uploads = new Map(); // upload id -> { sha256, length, contentType }
  const multipartUploads = new Map(); // upload id -> { parts: Map(number -> { sha256, length }), completed }
  const bigResponse = patternBytes(BIG_RESPONSE_SIZE, 7);
  const bigResponseSha256 = sha256(bigResponse);
  const timers = new Set();
  let baseUrl = "";

  const later = (ms, fn) => {
    const t = setTimeout(() => {
      timers.delete(t);
      fn();
    }, ms);
    timers.add(t);
    return t;
  };

  const server = http.createServer((req, res) => {
    const url = new URL(req.url, "http://mock.invalid");
    const record = {
      method: req.method,
      path: req.url,
      pathname: url.pathname,
      query: url.searchParams,
      headers: { ...req.headers },
      rawHeaders: [...req.rawHeaders],
      bodyLength: 0,
      sha256: undefined,
      body: undefined,
      json: undefined,
      complete: false,
      aborted: false,
      receivedAt: Date.now(),
      events: [],
    };
    requests.push(record);

    const hash = createHash("sha256");
    const kept = [];
    let keptLen = 0;
    req.on("data", (chunk) => {
      hash.update(chunk);
      record.bodyLength += chunk.length;
      if (keptLen <= BODY_KEEP_LIMIT) {
        kept.push(chunk);
        keptLen += chunk.length;
      }
    });
    req.on("aborted", () => {
      record.aborted = true;
    });
    req.on("error", () => {
      record.aborted = true;
    });
    req.on("end", () => {
      record.complete = true;
      record.sha256 = hash.digest("hex");
      if (record.bodyLength <= BODY_KEEP_LIMIT) {
        record.body = Buffer.concat(kept);
        record.json = parseJson(record.body);
      }
      try {
        route(req, res, url, record);
      } catch (err) {
        json(res, 500, { detail: `mock error: ${err.message}` });
      }
    });
  });

  function sse(res, record, events, intervalMs, { status = 200 } = {}) {
    res.writeHead(status, {
      "content-type": "text/event-stream",
      "cache-control": "no-cache",
      "x-fal-request-id": randomUUID(),
    });
    res.flushHeaders();
    let i = 0;
    const sendNext = () => {
      if (res.destroyed) return;
      const ev = events[i++];
      record.events.push(Date.now());
      res.write(`event: ${ev.event ?? "message"}\ndata: ${JSON.stringify(ev.data)}\n\n`);
      if (i < events.length) later(intervalMs, sendNext);
      else res.end();
    };
    sendNext();
  }

  function queueUrls(app, id) {
    const base = `https://queue.fal.run/${app}/requests/${id}`;
    return {
      response_url: base,
      status_url: `${base}/status`,
      cancel_url: `${base}/cancel`,
    };
  }

  function result(entry) {
    const prompt = entry.input?.prompt ?? null;
    return {
      images: [
        {
          url: `https://v3.fal.media/files/mock/${entry.id}.png`,
          width: 1024,
          height: 768,
          content_type: "image/png",
        },
      ],
      prompt,
      seed: 42,
      has_nsfw_concepts: [false],
      timings: { inference: 0.5 },
    };
  }

  function route(req, res, url, record) {
    const parts = url.pathname.split("/").filter(Boolean);
    const host = parts[0];
    const rest = parts.slice(1);
    const method = req.method;

    // Direct (non-proxied) storage upload target, see storage.upload in the client.
    if (host === "upload") {
      if (method !== "PUT") return json(res, 405, { detail: "Method Not Allowed" });
      uploads.set(rest[0], {
        sha256: record.sha256,
        length: record.bodyLength,
        contentType: req.headers["content-type"],
      });
      return json(res, 200, { ok: true });
    }

    // Direct multipart upload target (client releases since 1.2.0, files over 90 MiB):
    // PUT <upload_url path>/<part number>, then POST <upload_url path>/complete, each with
    // upload_url's query.
    if (host === "upload-multipart") {
      const [id, , step] = rest;
      if (url.searchParams.get("upload_id") !== id) return json(res, 400, { detail: "upload_id query missing" });
      const entry = multipartUploads.get(id) ?? { parts: new Map(), completed: null };
      multipartUploads.set(id, entry);
      if (/^[1-9]\d*$/.test(step ?? "") && method === "PUT") {
        entry.parts.set(Number(step), { sha256: record.sha256, length: record.bodyLength });
        return json(res, 200, { partNumber: Number(step), etag: `"${record.sha256}"` });
      }
      if (step === "complete" && method === "POST") {
        entry.completed = record.json?.parts ?? null;
        return json(res, 200, { ok: true });
      }
      return json(res, 405, { detail: "Method Not Allowed" });
    }

    // fal's CDN, where results' images live: a real PNG for any .png under /files/.
    if (host === "v3.fal.media") {
      if ((method === "GET" || method === "HEAD") && rest[0] === "files" && url.pathname.endsWith(".png")) {
        res.writeHead(200, { "content-type": "image/png", "content-length": MOCK_PNG.length });
        return res.end(method === "HEAD" ? undefined : MOCK_PNG);
      }
      return json(res, 404, { detail: "Not Found" });
    }

    if (host === "fal.run") {
      const endpoint = rest.join("/");
      const app = rest.slice(0, 2).join("/");
      const requestId = randomUUID();
      if (app === "fal-ai/slow") {
        later(SLOW_DELAY_MS, () => {
          if (!res.destroyed) json(res, 200, { slow: true }, { "x-fal-request-id": requestId });
        });
        return;
      }
      if (app === "fal-ai/validation-error") {
        return json(res, 422, VALIDATION_ERROR_BODY, { "x-fal-request-id": requestId });
      }
      if (app === "fal-ai/server-error") {
        return json(res, 500, SERVER_ERROR_BODY, { "x-fal-request-id": requestId });
      }
      if (app === "fal-ai/gzip-response") {
        const gz = gzipSync(Buffer.from(JSON.stringify(GZIP_RESPONSE_BODY)));
        res.writeHead(200, {
          "content-type": "application/json",
          "content-encoding": "gzip",
          "content-length": gz.length,
          "x-fal-request-id": requestId,
        });
        res.end(gz);
        return;
      }
      if (app === "fal-ai/big-response") {
        res.writeHead(200, {
          "content-type": "application/octet-stream",
          "content-length": bigResponse.length,
          "x-fal-request-id": requestId,
        });
        res.end(bigResponse);
        return;
      }
      if (rest[rest.length - 1] === "stream" && method === "POST") {
        const prompt = record.json?.prompt ?? null;
        const events = [];
        for (let i = 0; i < SSE_EVENT_COUNT; i++) {
          const last = i === SSE_EVENT_COUNT - 1;
          events.push({
            data: last
              ? { step: i, done: true, prompt, images: [{ url: "https://v3.fal.media/files/mock/final.png" }] }
              : { step: i, done: false, prompt, partial: `chunk-${i}` },
          });
        }
        return sse(res, record, events, SSE_INTERVAL_MS);
      }
      // Generic synchronous endpoint (fal.run/<endpoint>): any method.
      if (method === "HEAD") {
        res.writeHead(200, {
          "content-type": "application/json",
          "x-fal-request-id": requestId,
          "x-mock-method": "HEAD",
        });
        return res.end();
      }
      const body = {
        endpoint,
        method,
        query: Object.fromEntries(url.searchParams),
        received: { length: record.bodyLength, sha256: record.sha256 },
        ...(record.json && typeof record.json === "object" && !Array.isArray(record.json)
          ? { ...result({ id: requestId, input: record.json }), input: record.json }
          : {}),
      };
      return json(res, 200, body, { "x-fal-request-id": requestId, "x-mock-method": method });
    }

    if (host === "queue.fal.run") {
      const reqIdx = rest.indexOf("requests");
      if (reqIdx === -1) {
        // submit
        if (method !== "POST") return json(res, 405, { detail: "Method Not Allowed" });
        const endpoint = rest.join("/");
        const app = rest.slice(0, 2).join("/");
        if (app === "fal-ai/validation-error") {
          return json(res, 422, VALIDATION_ERROR_BODY, { "x-fal-request-id": randomUUID() });
        }
        const id = randomUUID();
        queue.set(id, {
          id,
          endpoint,
          app,
          input: record.json,
          statusCalls: 0,
          cancelled: false,
        });
        return json(
          res,
          200,
          { status: "IN_QUEUE", request_id: id, ...queueUrls(app, id), queue_position: 0 },
          { "x-fal-request-id": id },
        );
      }
      const app = rest.slice(0, reqIdx).join("/");
      const id = rest[reqIdx + 1];
      const action = rest.slice(reqIdx + 2).join("/");
      const entry = queue.get(id);
      if (!entry || entry.app !== app) {
        return json(res, 404, { detail: "Request not found" });
      }
      const logs = url.searchParams.get("logs") === "1";
      const logLines = [
        { message: "Loading model", level: "INFO", source: "user", timestamp: new Date().toISOString() },
        { message: "Generating", level: "INFO", source: "user", timestamp: new Date().toISOString() },
      ];
      const statusAt = (n) => {
        const urls = queueUrls(app, id);
        // fal-ai/slow runs until it is cancelled.
        if (app === "fal-ai/slow" && !entry.cancelled) {
          return { status: "IN_PROGRESS", ...urls, ...(logs ? { logs: logLines.slice(0, 1) } : {}) };
        }
        if (n === 0) return { status: "IN_QUEUE", queue_position: 1, ...urls, ...(logs ? { logs: [] } : {}) };
        if (n === 1)
          return { status: "IN_PROGRESS", ...urls, ...(logs ? { logs: logLines.slice(0, 1) } : {}) };
        return {
          status: "COMPLETED",
          ...urls,
          metrics: { inference_time: 0.5 },
          ...(logs ? { logs: logLines } : {}),
        };
      };
      if (action === "status" && method === "GET") {
        return json(res, 200, statusAt(entry.statusCalls++), { "x-fal-request-id": id });
      }
      if (action === "status/stream" && method === "GET") {
        const events = [0, 1, 2].map((n) => ({ data: statusAt(n) }));
        entry.statusCalls = 3;
        return sse(res, record, events, SSE_INTERVAL_MS);
      }
      if (action === "" && method === "GET") {
        return json(res, 200, result(entry), { "x-fal-request-id": id });
      }
      if (action === "cancel" && method === "PUT") {
        entry.cancelled = true;
        return json(res, 202, { status: "CANCELLATION_REQUESTED" }, { "x-fal-request-id": id });
      }
      return json(res, 404, { detail: "Not Found" });
    }

    // fal's REST API, on its current host and on the one client releases up to 1.9.2 use.
    if (host === "rest.fal.ai" || host === "rest.alpha.fal.ai") {
      const path = rest.join("/");
      if (path === "tokens" && method === "POST") {
        const token = `mock-jwt.${randomUUID()}`;
        tokens.push({ token, host, body: record.json });
        return json(res, 201, token);
      }
      const initiate = { "storage/upload/initiate": "upload", "storage/upload/initiate-multipart": "upload-multipart" };
      if (initiate[path] && method === "POST") {
        const id = randomUUID();
        const fileName = encodeURIComponent(record.json?.file_name ?? "file.bin");
        // A query on upload_url, as fal's signed URLs have: the client keeps it on every part URL.
        const query = initiate[path] === "upload-multipart" ? `?upload_id=${id}` : "";
        return json(res, 200, {
          upload_url: `${baseUrl}/${initiate[path]}/${id}/${fileName}${query}`,
          file_url: `https://v3.fal.media/files/mock/${id}/${fileName}`,
        });
      }
      return json(res, 404, { detail: "Not Found" });
    }

    return json(res, 404, { detail: `mock: unknown host ${host}` });
  }

  await new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", resolve);
  });
  const { port } = server.address();
  baseUrl = `http://127.0.0.1:${port}`;

  return {
    url: baseUrl,
    port,
    requests,
    tokens,
    uploads,
    multipartUploads,
    queue,
    bigResponseSha256,
    /** Forget all recorded requests and state. */
    reset() {
      requests.length = 0;
      tokens.length = 0;
      uploads.clear();
      multipartUploads.clear();
      queue.clear();
    },
    async close() {
      for (const t of timers) clearTimeout(t);
      timers.clear();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
