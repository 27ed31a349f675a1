// The page: search, heat-maps, the copy check and the catalogue view over the REST API.
// Payloads are untrusted: everything from the server is written with textContent, never as HTML.

import * as api from "./api.js";

const $ = (id) => document.getElementById(id);

const state = {
  catalogue: "",
  catalogues: [],
  attributes: [],
  query: null, // {image: data URL} when a file is the query
  hits: [],
  cursors: [null],
  page: 0,
  copy: { a: null, b: null },
  started: performance.now(),
};

// el("p", {class: "x", text: "..."}, child...): children are nodes or strings (text nodes).
function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("data-") || k.startsWith("aria-")) e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c);
  return e;
}

// Messages and progress.

function showMessage(text, kind) {
  const m = $("message");
  m.textContent = text;
  m.className = kind;
  m.hidden = false;
}

const showError = (e) => showMessage(e && e.message ? e.message : String(e), "error");
const showInfo = (text) => showMessage(text, "info");

function clearMessage() {
  $("message").hidden = true;
  $("message").textContent = "";
}

let running = 0;

// Runs fn with the progress line shown; errors go to the message area.
async function busy(text, fn) {
  running += 1;
  $("progress-text").textContent = text;
  $("progress").hidden = false;
  try {
    return await fn();
  } catch (e) {
    showError(e);
    return undefined;
  } finally {
    running -= 1;
    if (running === 0) $("progress").hidden = true;
  }
}

function fmt(x) {
  return typeof x === "number" ? x.toFixed(3) : "—";
}

// Loading the server's catalogues, the model and the current catalogue's fields.

async function load() {
  clearMessage();
  const cats = await busy("Loading catalogues…", () => api.get("/v1/catalogues"));
  if (!cats) return;
  state.catalogues = cats;
  const select = $("catalogue");
  select.replaceChildren(...cats.map((c) => el("option", { value: c.name, text: `${c.name} (${c.items} items)` })));
  renderCatalogues();
  loadModel();
  if (!cats.length) {
    showInfo("No catalogue yet: create one with asen ingest or PUT /v1/catalogues/{name}.");
    return;
  }
  const wanted = sessionStorage.getItem("asen-catalogue");
  select.value = cats.some((c) => c.name === wanted) ? wanted : cats[0].name;
  await selectCatalogue();
}

async function loadModel() {
  const m = await busy("Reading the model…", () => api.get("/v1/model"));
  if (!m) return;
  const calibrated = m.match_thresholds ? "calibrated copy-check thresholds" : "no calibrated thresholds";
  $("model-info").textContent =
    `The server embeds queries with model ${m.fingerprint}: ${m.variant} on ${m.backbone}, ` +
    `${m.dimension}-d embeddings, ${m.attributes.length} attributes, ${calibrated}. ` +
    "A catalogue records its attributes and dimension, not the model that filled it.";
}

async function selectCatalogue() {
  state.catalogue = $("catalogue").value;
  sessionStorage.setItem("asen-catalogue", state.catalogue);
  const info = state.catalogues.find((c) => c.name === state.catalogue);
  state.attributes = info ? info.schema.attributes : [];
  renderAttributes();
  state.cursors = [null];
  state.page = 0;
  await Promise.all([loadFields(), loadItems()]);
}

function renderAttributes() {
  const box = $("attributes");
  box.replaceChildren(el("legend", { text: "Attributes and weights" }));
  state.attributes.forEach((name, i) => {
    const check = el("input", { type: "checkbox", id: `attr-${i}`, checked: i === 0, "data-attribute": name });
    const weight = el("input", {
      type: "range", id: `weight-${i}`, min: "0.1", max: "1", step: "0.1", value: "1", "data-attribute": name,
    });
    const out = el("output", { id: `weight-out-${i}`, text: "1.0" });
    weight.addEventListener("input", () => { out.textContent = Number(weight.value).toFixed(1); });
    box.append(el("div", { class: "row attribute" },
      check, el("label", { htmlFor: `attr-${i}`, text: name }),
      el("label", { htmlFor: `weight-${i}`, class: "weight", text: `weight of ${name}` }), weight, out));
  });
  const options = () => state.attributes.map((a) => el("option", { value: a, text: a }));
  $("heat-attribute").replaceChildren(...options());
  $("copy-heat-attribute").replaceChildren(el("option", { value: "", text: "(none)" }), ...options());
}

// Filters and group-by offer the payload fields whose values repeat, with their counts.
async function loadFields() {
  const c = state.catalogue;
  const page = await busy("Reading payload fields…", () => api.get(`/v1/catalogues/${api.enc(c)}/items?limit=50`));
  const filters = $("filters");
  const group = $("group-by");
  filters.replaceChildren();
  group.replaceChildren(el("option", { value: "", text: "(none)" }));
  if (!page) return;
  const fields = [];
  for (const item of page.items) {
    for (const [k, v] of Object.entries(item.payload)) {
      if (["string", "number", "boolean"].includes(typeof v) && !fields.includes(k)) fields.push(k);
    }
  }
  const answers = await busy("Reading field values…", () => Promise.all(fields.slice(0, 16).map((f) =>
    api.get(`/v1/catalogues/${api.enc(c)}/fields/${api.enc(f)}/values?limit=40`))));
  if (!answers || c !== state.catalogue) return;
  answers.forEach((v, i) => {
    if (v.truncated || v.values.length < 2 || v.values.length >= v.items) return;
    const id = `filter-${i}`;
    const select = el("select", { id, "data-field": v.field },
      el("option", { value: "", text: "(any)" }),
      ...v.values.map((x) => el("option", { value: JSON.stringify(x.value), text: `${x.value} (${x.count})` })));
    filters.append(el("div", { class: "row" }, el("label", { htmlFor: id, text: v.field }), select));
    group.append(el("option", { value: v.field, text: v.field }));
  });
}

// Search.

function selectedAttributes() {
  return state.attributes
    .map((name, i) => ({ name, on: $(`attr-${i}`).checked, weight: Number($(`weight-${i}`).value) }))
    .filter((a) => a.on);
}

function querySubject() {
  const id = $("query-id").value.trim();
  if (id) return { catalogue: state.catalogue, item_id: id };
  if (state.query) return { image: state.query.image };
  return null;
}

async function search() {
  clearMessage();
  const attrs = selectedAttributes();
  if (!attrs.length) return showError(new Error("Pick at least one attribute."));
  const subject = querySubject();
  if (!subject) return showError(new Error("Give a query: choose or drop an image, type an item id, or click an item."));
  const k = Number($("k").value);
  const body = { k, with_payload: true };
  if (attrs.length === 1) body.attribute = attrs[0].name;
  else body.attributes = Object.fromEntries(attrs.map((a) => [a.name, a.weight]));
  if (subject.image) body.image = subject.image;
  else body.item_id = subject.item_id;
  const conditions = [...$("filters").querySelectorAll("select")]
    .filter((s) => s.value)
    .map((s) => ({ match: { field: s.dataset.field, value: JSON.parse(s.value) } }));
  if (conditions.length === 1) body.filter = conditions[0];
  else if (conditions.length > 1) body.filter = { and: conditions };
  if ($("group-by").value) body.group_by = { field: $("group-by").value, group_size: Number($("group-size").value) };
  if (!$("heat-attribute").value || !attrs.some((a) => a.name === $("heat-attribute").value)) {
    $("heat-attribute").value = attrs[0].name;
  }
  const text = subject.image ? "Embedding the image and searching…" : "Searching…";
  const c = state.catalogue;
  const result = await busy(text, () => api.post(`/v1/catalogues/${api.enc(c)}/search`, body));
  if (!result) return;
  renderQuery(subject);
  renderResults(result, attrs);
}

function renderQuery(subject) {
  const fig = $("query-preview");
  const img = fig.querySelector("img");
  fig.querySelector("figcaption").textContent = subject.image ? "query image" : `query: item ${subject.item_id}`;
  fig.dataset.subject = JSON.stringify(subject.image ? { image: true } : subject);
  fig.hidden = false;
  if (subject.image) img.src = subject.image;
  else api.itemImage(subject.catalogue, subject.item_id).then((u) => { img.src = u; }, showError);
  drawHeat(fig, subject);
}

function renderResults(result, attrs) {
  const box = $("results");
  const groups = result.groups || [{ key: null, hits: result.hits }];
  const all = groups.flatMap((g) => g.hits);
  box.replaceChildren();
  for (const g of groups) {
    if (g.key !== null) box.append(el("h3", { class: "group", text: `${$("group-by").value}: ${g.key}` }));
    for (const hit of g.hits) box.append(card(hit, attrs));
  }
  const names = attrs.map((a) => (attrs.length > 1 ? `${a.name} ×${a.weight}` : a.name)).join(" + ");
  $("results-summary").textContent = all.length
    ? `${all.length} results by ${names}. Click one to search like it.`
    : "No results (the filters may exclude every item).";
  if (!state.firstResults) {
    state.firstResults = performance.now() - state.started;
    document.body.dataset.firstResultsMs = String(Math.round(state.firstResults));
  }
}

const MAIN_FIELDS = ["productDisplayName", "articleType", "baseColour", "gender"];

function payloadList(payload) {
  const keys = [...MAIN_FIELDS.filter((k) => k in payload), ...Object.keys(payload).filter((k) => !MAIN_FIELDS.includes(k))];
  const dl = el("dl", { class: "payload" });
  for (const k of keys.slice(0, 5)) {
    const v = payload[k];
    dl.append(el("dt", { text: k }), el("dd", { text: typeof v === "string" ? v : JSON.stringify(v) }));
  }
  return dl;
}

function thumbnail(id, label) {
  const fig = el("figure", { class: "thumb" });
  const img = el("img", { alt: label });
  img.addEventListener("load", () => fig.classList.add("loaded"));
  api.itemImage(state.catalogue, id).then((u) => { img.src = u; }, (e) => {
    fig.append(el("figcaption", { class: "error", text: `no image: ${e.message}` }));
  });
  fig.append(img, el("img", { class: "heat", alt: "", hidden: true }));
  return fig;
}

function card(hit, attrs) {
  const fig = thumbnail(hit.id, `item ${hit.id}`);
  const pick = el("button", { type: "button", class: "pick", "aria-label": `Search like item ${hit.id}` }, fig);
  pick.addEventListener("click", () => useItemAsQuery(hit.id));
  const scores = el("dl", { class: "scores" });
  for (const a of attrs) scores.append(el("dt", { text: a.name }), el("dd", { text: fmt(hit.attribute_scores[a.name]) }));
  const article = el("article", { class: "card", "data-id": hit.id },
    pick, el("p", { class: "id", text: hit.id }), el("p", { class: "score", text: `score ${fmt(hit.score)}` }),
    scores, payloadList(hit.payload || {}));
  drawHeat(fig, { catalogue: state.catalogue, item_id: hit.id });
  return article;
}

function useItemAsQuery(id) {
  state.query = null;
  $("query-file").value = "";
  $("query-id").value = id;
  showView("search");
  search();
}

// Heat-maps: the attention of the chosen attribute laid over the query and every result.

function drawHeat(fig, subject) {
  const heat = fig.querySelector("img.heat");
  if (!heat) return;
  if (!$("heat-toggle").checked) {
    heat.hidden = true;
    fig.classList.remove("heat-on");
    return;
  }
  const attribute = $("heat-attribute").value;
  const real = subject.image === true ? { image: state.query && state.query.image } : subject;
  api.heatmap(real, attribute).then((u) => {
    heat.onload = () => fig.classList.add("heat-on");
    heat.src = u;
    heat.alt = `attention for ${attribute}`;
    heat.hidden = false;
  }, showError);
}

function redrawHeat() {
  const fig = $("query-preview");
  if (!fig.hidden && fig.dataset.subject) drawHeat(fig, JSON.parse(fig.dataset.subject));
  for (const c of $("results").querySelectorAll(".card")) {
    drawHeat(c.querySelector("figure"), { catalogue: state.catalogue, item_id: c.dataset.id });
  }
}

async function setQueryFile(file) {
  if (!file) return;
  const image = await busy("Reading the image…", () => api.fileToBase64(file));
  if (!image) return;
  state.query = { image };
  $("query-id").value = "";
  const fig = $("query-preview");
  fig.querySelector("img").src = image;
  fig.querySelector("figcaption").textContent = `query image ${file.name}`;
  fig.hidden = false;
}

// Copy check.

async function copySide(x) {
  const id = $(`copy-${x}-id`).value.trim();
  if (id) return { catalogue: state.catalogue, item_id: id };
  if (state.copy[x]) return { image: state.copy[x] };
  throw new Error(`Give ${x.toUpperCase()}: choose an image file or type an item id.`);
}

function showCopyImage(x, subject) {
  const img = $(`copy-${x}-view`).querySelector("img");
  if (subject.image) img.src = subject.image;
  else api.itemImage(subject.catalogue, subject.item_id).then((u) => { img.src = u; }, showError);
}

async function compare() {
  clearMessage();
  let a;
  let b;
  try {
    a = await copySide("a");
    b = await copySide("b");
  } catch (e) {
    return showError(e);
  }
  showCopyImage("a", a);
  showCopyImage("b", b);
  const r = await busy("Embedding and comparing…", () => api.post("/v1/compare", { a, b }));
  if (!r) return;
  const rows = r.attributes.map((x) => {
    const fill = el("span", { class: "fill" });
    fill.style.width = `${Math.max(0, x.similarity || 0) * 100}%`;
    const bar = el("span", { class: x.matches ? "bar match" : "bar" }, fill);
    if (typeof x.threshold === "number") {
      const mark = el("span", { class: "mark", title: `threshold ${fmt(x.threshold)}` });
      mark.style.left = `${x.threshold * 100}%`;
      bar.append(mark);
    }
    const match = x.matches === null ? "—" : x.matches ? "yes" : "no";
    return el("tr", { "data-attribute": x.attribute },
      el("th", { scope: "row", text: x.attribute }),
      el("td", {}, bar, el("span", { text: ` ${fmt(x.similarity)}` })),
      el("td", { text: fmt(x.threshold) }),
      el("td", { class: `match-${match}`, text: match }));
  });
  $("comparison").querySelector("tbody").replaceChildren(...rows);
  $("comparison").hidden = false;
  $("verdict").textContent = `Verdict: ${r.verdict}` + (r.calibrated ? "" : ` (${r.thresholds_source})`);
  const attribute = $("copy-heat-attribute").value;
  for (const [x, s] of [["a", a], ["b", b]]) {
    const heat = $(`copy-${x}-view`).querySelector("img.heat");
    heat.hidden = true;
    if (attribute) {
      api.heatmap(s, attribute).then((u) => {
        heat.src = u;
        heat.alt = `attention of ${x.toUpperCase()} for ${attribute}`;
        heat.hidden = false;
      }, showError);
    }
  }
}

async function copies() {
  clearMessage();
  let a;
  try {
    a = await copySide("a");
  } catch (e) {
    return showError(e);
  }
  const body = { min_matches: Number($("copies-m").value), k: Number($("copies-k").value), with_payload: true };
  if (a.image) body.image = a.image;
  else body.item_id = a.item_id;
  const c = state.catalogue;
  const hits = await busy("Looking for copies…", () => api.post(`/v1/catalogues/${api.enc(c)}/copies`, body));
  if (!hits) return;
  const box = $("copies");
  box.replaceChildren(...hits.map((h) => {
    const pick = el("button", { type: "button", class: "pick", "aria-label": `Compare A with item ${h.id}` },
      thumbnail(h.id, `item ${h.id}`));
    pick.addEventListener("click", () => { $("copy-b-id").value = h.id; state.copy.b = null; compare(); });
    return el("article", { class: "card", "data-id": h.id }, pick, el("p", { class: "id", text: h.id }),
      el("p", { text: `matches on ${h.matching.length}: ${h.matching.join(", ")}` }), payloadList(h.payload || {}));
  }));
  if (!hits.length) box.append(el("p", { text: `No item matches A on ${body.min_matches} attributes or more.` }));
}

// Catalogue view.

function renderCatalogues() {
  $("catalogues").querySelector("tbody").replaceChildren(...state.catalogues.map((c) => el("tr", {},
    el("th", { scope: "row", text: c.name }),
    el("td", { text: String(c.items) }),
    el("td", { text: c.schema.attributes.map((a) => `${a} (${c.attribute_counts[a] ?? 0})`).join(", ") }),
    el("td", { text: String(c.schema.dimension) }))));
}

async function loadItems() {
  const c = state.catalogue;
  const after = state.cursors[state.page];
  const q = after === null ? "" : `&after=${api.enc(after)}`;
  const page = await busy("Loading items…", () => api.get(`/v1/catalogues/${api.enc(c)}/items?limit=12${q}`));
  if (!page) return;
  state.cursors[state.page + 1] = page.next_cursor;
  $("page-prev").disabled = state.page === 0;
  $("page-next").disabled = !page.next_cursor;
  $("page-label").textContent = `page ${state.page + 1} of ${c}`;
  $("items").replaceChildren(...page.items.map(itemCard));
}

function itemCard(item) {
  const use = el("button", { type: "button", text: "Search like this" });
  use.addEventListener("click", () => useItemAsQuery(item.id));
  const del = el("button", { type: "button", class: "danger", text: "Delete" });
  del.addEventListener("click", async () => {
    if (!del.dataset.armed) {
      del.dataset.armed = "1";
      del.textContent = `Confirm: delete ${item.id}`;
      return;
    }
    const c = state.catalogue;
    const done = await busy("Deleting…", () => api.call("DELETE", `/v1/catalogues/${api.enc(c)}/items/${api.enc(item.id)}`));
    if (done) {
      await load();
      showInfo(`Deleted item ${item.id} from ${c}.`);
    } else {
      delete del.dataset.armed;
      del.textContent = "Delete";
    }
  });
  return el("article", { class: "card", "data-id": item.id }, thumbnail(item.id, `item ${item.id}`),
    el("p", { class: "id", text: item.id }), payloadList(item.payload), el("div", { class: "row" }, use, del));
}

// Views and wiring.

function showView(name) {
  for (const v of ["search", "copy", "catalogue"]) {
    $(`view-${v}`).hidden = v !== name;
    $(`tab-${v}`).setAttribute("aria-pressed", String(v === name));
  }
}

function wire() {
  $("key").value = api.key();
  $("key").addEventListener("change", () => { api.setKey($("key").value.trim()); load(); });
  $("catalogue").addEventListener("change", () => { clearMessage(); selectCatalogue(); });
  for (const v of ["search", "copy", "catalogue"]) $(`tab-${v}`).addEventListener("click", () => showView(v));
  $("search-form").addEventListener("submit", (e) => { e.preventDefault(); search(); });
  $("query-file").addEventListener("change", () => setQueryFile($("query-file").files[0]));
  $("query-id").addEventListener("input", () => { state.query = null; $("query-file").value = ""; });
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    setQueryFile(e.dataTransfer.files[0]);
  });
  $("heat-toggle").addEventListener("change", redrawHeat);
  $("heat-attribute").addEventListener("change", redrawHeat);
  for (const x of ["a", "b"]) {
    $(`copy-${x}-file`).addEventListener("change", async () => {
      const f = $(`copy-${x}-file`).files[0];
      if (!f) return;
      const image = await busy("Reading the image…", () => api.fileToBase64(f));
      if (!image) return;
      state.copy[x] = image;
      $(`copy-${x}-id`).value = "";
      showCopyImage(x, { image });
    });
    $(`copy-${x}-id`).addEventListener("input", () => { state.copy[x] = null; $(`copy-${x}-file`).value = ""; });
  }
  $("copy-form").addEventListener("submit", (e) => { e.preventDefault(); compare(); });
  $("copies-form").addEventListener("submit", (e) => { e.preventDefault(); copies(); });
  $("page-prev").addEventListener("click", () => { state.page = Math.max(0, state.page - 1); loadItems(); });
  $("page-next").addEventListener("click", () => { state.page += 1; loadItems(); });
}

wire();
load();
