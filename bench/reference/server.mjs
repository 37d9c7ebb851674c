// The official Node proxy (@fal-ai/server-proxy 1.2.1, Express adapter), run by
// scripts/bench.sh so its cost can be compared with fal-proxy's on the same mock.
// It has no upstream setting, so this harness maps the URL of each fetch it makes
// (https://HOST/PATH?QUERY) onto $FAL_PROXY_UPSTREAM/HOST/PATH?QUERY, as fal-proxy's
// own seam does; nothing else about it is changed. Listens on 127.0.0.1:$PORT (0: free).
import express from "express";
import { createHandler, route } from "@fal-ai/server-proxy/express";

const upstream = process.env.FAL_PROXY_UPSTREAM;
if (!upstream) throw new Error("FAL_PROXY_UPSTREAM must point at the mock");
const fetchUpstream = globalThis.fetch;
globalThis.fetch = (input, init) => {
  const url = new URL(typeof input === "string" ? input : input.url);
  return fetchUpstream(`${upstream}/${url.host}${url.pathname}${url.search}`, init);
};

const app = express();
app.use(express.json({ limit: "32mb" }));
app.all(route, createHandler());
const server = app.listen(Number(process.env.PORT ?? 0), "127.0.0.1", () => {
  console.error(`listening on http://127.0.0.1:${server.address().port}`);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
