// The playground page's script (public/index.html). scripts/build-playground.sh bundles it
// with the real @fal-ai/client into public/playground.js; nothing is loaded from a CDN.
//
// - The proxy is this site's own /api/fal/proxy; the page never talks to anything else.
// - The key mode comes from GET /api/fal/proxy/info ({"key_mode": "user" | "server" |
//   "user-or-server"}), a read-only answer of the proxy that reveals no key.
// - A visitor's key lives in localStorage, is shown masked (its last four characters), is
//   sent only to the proxy, in x-fal-user-key, and is never logged.
// - App-user authentication: if the embedding app defines `window.falProxyAuthToken`, a
//   function returning its signed-in user's token (or a promise of one), the page calls it
//   before every proxy request and sends `Authorization: Bearer <token>`. The page never
//   signs anyone in itself.

import { ApiError, ValidationError, createFalClient } from "@fal-ai/client";

const PROXY_URL = "/api/fal/proxy";
const INFO_URL = `${PROXY_URL}/info`;
const KEY_STORAGE = "fal-proxy-playground:fal-key";
const MODES = ["user", "server", "user-or-server"];
const MAX_LOG_LINES = 200;

const $ = (id) => document.getElementById(id);
const ui = {
  chip: $("key-chip"),
  card: $("key-card"),
  cardButton: $("card-settings"),
  openSettings: $("open-settings"),
  dialog: $("settings"),
  keyForm: $("key-form"),
  modeNote: $("mode-note"),
  keyFields: $("key-fields"),
  savedKey: $("saved-key"),
  keyInput: $("key-input"),
  keyError: $("key-error"),
  clearKey: $("clear-key"),
  closeSettings: $("close-settings"),
  form: $("generate-form"),
  model: $("model"),
  prompt: $("prompt"),
  formError: $("form-error"),
  generate: $("generate"),
  cancel: $("cancel"),
  status: $("status"),
  logsBox: $("logs-box"),
  logs: $("logs"),
  resultEmpty: $("result-empty"),
  images: $("images"),
  rawBox: $("raw-box"),
  raw: $("raw"),
};
const fieldErrors = { model: $("model-error"), prompt: $("prompt-error") };

/** The proxy's key mode; null until known, "unknown" if the proxy did not say. */
let mode = null;
/** The run in progress: { controller, model, requestId, cancelRequested }. */
let running = null;

// ---- the visitor's key -------------------------------------------------------------------

function savedKey() {
  try {
    return localStorage.getItem(KEY_STORAGE) || null;
  } catch {
    return null;
  }
}

/** A fal key as the page accepts it: `fal_` then visible ASCII, at most 512 characters. */
function looksLikeFalKey(value) {
  return value.length <= 512 && /^fal_[\x21-\x7e]+$/.test(value);
}

function masked(key) {
  return `•••• ${key.slice(-4)}`;
}

/** The key to send: none in `server` mode (the proxy would ignore it), else the saved one. */
function keyToSend() {
  return mode === "server" ? null : savedKey();
}

// ---- the client ----------------------------------------------------------------------------

/** The embedding app's token for its signed-in user, from `window.falProxyAuthToken`. */
async function appToken() {
  const hook = window.falProxyAuthToken;
  if (typeof hook !== "function") return null;
  const token = await hook();
  if (token === null || token === undefined || token === "") return null;
  if (typeof token !== "string" || !/^[\x21-\x7e]+$/.test(token)) {
    throw new Error("window.falProxyAuthToken returned something that is not a token");
  }
  return token;
}

const fal = createFalClient({
  proxyUrl: PROXY_URL,
  suppressLocalCredentialsWarning: true,
  requestMiddleware: async (request) => {
    const headers = { ...(request.headers ?? {}) };
    const key = keyToSend();
    if (key) headers["x-fal-user-key"] = key;
    const token = await appToken();
    if (token) headers.authorization = `Bearer ${token}`;
    return { ...request, headers };
  },
});

async function loadKeyMode() {
  try {
    const response = await fetch(INFO_URL, { headers: { accept: "application/json" }, cache: "no-store" });
    if (!response.ok) return "unknown";
    const body = await response.json();
    return MODES.includes(body?.key_mode) ? body.key_mode : "unknown";
  } catch {
    return "unknown";
  }
}

// ---- rendering -----------------------------------------------------------------------------

function render() {
  const key = savedKey();
  const needsKey = mode === "user" && !key;

  if (mode === null) ui.chip.textContent = "Loading…";
  else if (mode === "server") ui.chip.textContent = "Using this site's key";
  else if (key) {
    // "Your key" gives way on narrow screens; the masked key stays.
    const label = document.createElement("span");
    label.className = "chip-label";
    label.textContent = "Your key ";
    ui.chip.replaceChildren(label, masked(key));
  } else if (mode === "user-or-server") ui.chip.textContent = "Using this site's key";
  else ui.chip.textContent = "No key";

  ui.card.hidden = !needsKey;
  ui.generate.disabled = mode === null || needsKey || running !== null;
  ui.cancel.hidden = running === null;
  ui.form.setAttribute("aria-busy", String(running !== null));

  ui.keyFields.hidden = mode === "server";
  ui.modeNote.textContent =
    mode === "server"
      ? "This site uses its own fal key: you don't need one, and a key of yours would not be used."
      : mode === "user-or-server"
        ? "Your key is used when you save one here; otherwise this site's own fal key is used."
        : mode === "user"
          ? "This site has no fal key of its own: generating uses yours, billed to your fal account."
          : "This site's proxy did not say whether it has a key of its own; a saved key is sent with every request.";
  ui.savedKey.textContent = key ? `Saved key: ${masked(key)}` : "No key saved.";
  ui.clearKey.disabled = !key;
}

function setStatus(text) {
  ui.status.textContent = text;
}

function showLogs(logs) {
  if (!Array.isArray(logs) || logs.length === 0) return;
  ui.logsBox.hidden = false;
  const items = logs.slice(-MAX_LOG_LINES).map((line) => {
    const item = document.createElement("li");
    item.textContent = typeof line?.message === "string" ? line.message : JSON.stringify(line);
    return item;
  });
  ui.logs.replaceChildren(...items);
}

function clearRun() {
  for (const [name, element] of Object.entries(fieldErrors)) {
    element.hidden = true;
    element.textContent = "";
    ui[name].removeAttribute("aria-invalid");
  }
  ui.formError.hidden = true;
  ui.formError.textContent = "";
  ui.logs.replaceChildren();
  ui.logsBox.hidden = true;
  ui.images.replaceChildren();
  ui.rawBox.hidden = true;
  ui.raw.textContent = "";
  ui.resultEmpty.hidden = false;
  ui.resultEmpty.textContent = "Images you generate appear here.";
}

function showFieldError(name, message) {
  const element = fieldErrors[name];
  element.textContent = element.textContent ? `${element.textContent} ${message}` : message;
  element.hidden = false;
  ui[name].setAttribute("aria-invalid", "true");
}

function showFormError(message) {
  ui.formError.textContent = message;
  ui.formError.hidden = false;
}

/** Only links and images the browser can show safely (no `javascript:` URLs). */
function safeUrl(value) {
  try {
    const url = new URL(value, location.href);
    return ["https:", "http:", "data:", "blob:"].includes(url.protocol) ? url.href : null;
  } catch {
    return null;
  }
}

function imagesOf(data) {
  const list = Array.isArray(data?.images) ? data.images : data?.image ? [data.image] : [];
  return list.filter((image) => image && typeof image.url === "string" && safeUrl(image.url));
}

function showResult(result, prompt) {
  const images = imagesOf(result.data);
  const figures = images.map((image, index) => {
    const figure = document.createElement("figure");
    const img = document.createElement("img");
    img.src = safeUrl(image.url);
    img.alt = `Image ${index + 1} generated for: ${prompt}`;
    if (Number.isInteger(image.width) && Number.isInteger(image.height)) {
      img.width = image.width;
      img.height = image.height;
    }
    img.decoding = "async";
    figure.append(img);
    if (img.src.startsWith("https:") || img.src.startsWith("http:")) {
      const caption = document.createElement("figcaption");
      const link = document.createElement("a");
      link.href = img.src;
      link.target = "_blank";
      link.rel = "noopener noreferrer";
      link.textContent = "Open full size";
      caption.append(link);
      figure.append(caption);
    }
    return figure;
  });
  ui.images.replaceChildren(...figures);
  ui.resultEmpty.hidden = figures.length > 0;
  if (figures.length === 0) ui.resultEmpty.textContent = "The model answered without an image; its response is below.";
  ui.raw.textContent = JSON.stringify(result.data, null, 2);
  ui.rawBox.hidden = false;
}

/** fal's errors in words: a 422's field errors beside the form, a proxy refusal's detail. */
function showError(error) {
  if (error instanceof ValidationError) {
    const others = [];
    for (const fieldError of error.fieldErrors) {
      const loc = Array.isArray(fieldError?.loc) ? fieldError.loc : [];
      const name = loc[loc.length - 1];
      const message = String(fieldError?.msg ?? "invalid");
      if (name in fieldErrors) showFieldError(name, message);
      else others.push(loc.length > 0 ? `${loc.filter((part) => part !== "body").join(".") || "input"}: ${message}` : message);
    }
    showFormError(
      others.length > 0 ? `fal rejected the input (422): ${others.join("; ")}` : "fal rejected the input (422): see the fields above.",
    );
    setStatus("Failed.");
    return;
  }
  if (error instanceof ApiError) {
    const detail = typeof error.body?.detail === "string" ? error.body.detail : error.message;
    const who = error.status === 401 || error.status === 403 ? "The proxy refused the request" : "fal answered with an error";
    showFormError(`${who} (${error.status}): ${detail}`);
    setStatus("Failed.");
    return;
  }
  showFormError(`The request failed: ${error?.message ?? String(error)}`);
  setStatus("Failed.");
}

// ---- actions -------------------------------------------------------------------------------

function openSettings() {
  ui.keyInput.value = "";
  ui.keyError.hidden = true;
  ui.keyInput.removeAttribute("aria-invalid");
  render();
  ui.dialog.showModal();
  if (!ui.keyFields.hidden) ui.keyInput.focus();
}

function showKeyError(message) {
  ui.keyError.textContent = message;
  ui.keyError.hidden = false;
  ui.keyInput.setAttribute("aria-invalid", "true");
  ui.keyInput.focus();
}

function saveKey(event) {
  event.preventDefault();
  const value = ui.keyInput.value.trim();
  if (value === "") return showKeyError("Paste your fal API key first.");
  if (!looksLikeFalKey(value)) {
    return showKeyError("That does not look like a fal API key: fal keys start with fal_ and contain no spaces.");
  }
  try {
    localStorage.setItem(KEY_STORAGE, value);
  } catch {
    return showKeyError("This browser does not let the page store the key (local storage is off).");
  }
  ui.keyInput.value = "";
  ui.dialog.close();
  render();
  setStatus(`Key saved (${masked(value)}).`);
}

function clearKey() {
  try {
    localStorage.removeItem(KEY_STORAGE);
  } catch {
    // nothing stored
  }
  ui.keyInput.value = "";
  ui.dialog.close();
  render();
  setStatus("Key cleared.");
}

async function generate(event) {
  event.preventDefault();
  if (running) return;
  clearRun();
  const model = ui.model.value.trim().replace(/^\/+|\/+$/g, "");
  const prompt = ui.prompt.value.trim();
  if (!model) showFieldError("model", "Enter a fal endpoint id, such as fal-ai/flux/schnell.");
  if (!prompt) showFieldError("prompt", "Enter a prompt.");
  if (!model || !prompt) return;
  if (mode === "user" && !savedKey()) return render();

  const run = { controller: new AbortController(), model, requestId: null, cancelRequested: false };
  running = run;
  render();
  setStatus("Submitting…");
  ui.resultEmpty.textContent = "Generating…";
  const started = performance.now();
  // Cancel ends the run here at once; the client would notice only at its next poll.
  const cancelled = new Promise((_, reject) => {
    run.controller.signal.addEventListener("abort", () => reject(new Error("cancelled")), { once: true });
  });
  try {
    const subscribed = fal.subscribe(model, {
      input: { prompt },
      logs: true,
      abortSignal: run.controller.signal,
      onEnqueue: (requestId) => {
        run.requestId = requestId;
        if (run.cancelRequested) cancelQueued(run);
        else setStatus("Submitted; waiting for the queue…");
      },
      onQueueUpdate: (update) => {
        if (run.cancelRequested) return;
        if (update.status === "IN_QUEUE") {
          const position = Number.isInteger(update.queue_position) ? `, position ${update.queue_position}` : "";
          setStatus(`In queue${position}.`);
        } else if (update.status === "IN_PROGRESS") {
          setStatus("Running…");
        } else if (update.status === "COMPLETED") {
          setStatus("Completed; fetching the result…");
        }
        showLogs(update.logs);
      },
    });
    const result = await Promise.race([subscribed, cancelled]);
    if (!run.cancelRequested) {
      showResult(result, prompt);
      setStatus(`Done in ${((performance.now() - started) / 1000).toFixed(1)} s.`);
    }
  } catch (error) {
    if (!run.cancelRequested) showError(error);
  } finally {
    running = null;
    if (ui.rawBox.hidden) ui.resultEmpty.textContent = "Images you generate appear here.";
    render();
  }
}

/** Stops waiting here, and asks fal's queue to cancel the request (a PUT to its cancel URL). */
async function cancelQueued(run) {
  run.controller.abort();
  try {
    await fal.queue.cancel(run.model, { requestId: run.requestId });
    setStatus("Cancelled.");
  } catch (error) {
    setStatus("Stopped waiting, but the queue did not confirm the cancel.");
    showError(error);
  }
}

function cancel() {
  const run = running;
  if (!run || run.cancelRequested) return;
  run.cancelRequested = true;
  setStatus("Cancelling…");
  // Before the queue has answered there is nothing to cancel yet: onEnqueue does it.
  if (run.requestId) cancelQueued(run);
}

ui.openSettings.addEventListener("click", openSettings);
ui.cardButton.addEventListener("click", openSettings);
ui.closeSettings.addEventListener("click", () => ui.dialog.close());
ui.keyForm.addEventListener("submit", saveKey);
ui.clearKey.addEventListener("click", clearKey);
ui.form.addEventListener("submit", generate);
ui.cancel.addEventListener("click", cancel);
// Another tab saved or cleared the key.
window.addEventListener("storage", (event) => {
  if (event.key === KEY_STORAGE || event.key === null) render();
});

render();
loadKeyMode().then((found) => {
  mode = found;
  render();
});
