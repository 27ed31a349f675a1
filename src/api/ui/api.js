// The REST API as the page uses it: the key, JSON calls, images as blob URLs, and every
// failure as an Error whose message a person can read.

const KEY = "asen-key";

export function key() {
  return sessionStorage.getItem(KEY) || "";
}

export function setKey(value) {
  if (value) sessionStorage.setItem(KEY, value);
  else sessionStorage.removeItem(KEY);
  blobs.clear();
}

function headers(json) {
  const h = {};
  if (json) h["content-type"] = "application/json";
  const k = key();
  if (k) h["api-key"] = k;
  return h;
}

// Turns a failed answer into a readable message; the server's own words come last.
async function failure(resp) {
  let detail = "";
  try {
    const body = await resp.json();
    detail = body && body.status && body.status.error ? body.status.error : "";
  } catch (_) {
    detail = "";
  }
  let hint = "";
  if (resp.status === 401) hint = "This server needs a key: enter a read or write key in the API key field. ";
  else if (resp.status === 403) hint = "The key was refused (a read key cannot change the catalogue). ";
  return new Error(`${hint}${detail || resp.statusText || "request failed"} (HTTP ${resp.status})`);
}

async function send(method, path, body) {
  let resp;
  try {
    resp = await fetch(path, {
      method,
      headers: headers(body !== undefined),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new Error(`The server did not answer (${e.message}).`);
  }
  if (!resp.ok) throw await failure(resp);
  return resp;
}

export async function call(method, path, body) {
  const resp = await send(method, path, body);
  const json = await resp.json();
  return json.result;
}

export const get = (path) => call("GET", path);
export const post = (path, body) => call("POST", path, body);

// Binary answers (item images, heat-maps) come back as blob: URLs, since an <img> cannot send the key.
const blobs = new Map();

async function blobUrl(method, path, body) {
  const resp = await send(method, path, body);
  return URL.createObjectURL(await resp.blob());
}

export function itemImage(catalogue, id) {
  const path = `/v1/catalogues/${enc(catalogue)}/items/${enc(id)}/image`;
  if (!blobs.has(path)) {
    const p = blobUrl("GET", path);
    p.catch(() => blobs.delete(path));
    blobs.set(path, p);
  }
  return blobs.get(path);
}

// subject: {image: base64} or {catalogue, item_id}.
export function heatmap(subject, attribute) {
  return blobUrl("POST", "/v1/explain/heatmap", { ...subject, attribute });
}

export function enc(s) {
  return encodeURIComponent(s);
}

export function fileToBase64(file) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(String(r.result));
    r.onerror = () => reject(new Error(`Cannot read ${file.name}.`));
    r.readAsDataURL(file);
  });
}
