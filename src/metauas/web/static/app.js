// metauas web page: pick a normal image and query images, POST them to /api/segment,
// show overlays and scores; the threshold slider re-draws decisions and mask outlines
// locally from the 8-bit maps in the response (no new request).
"use strict";

// thresholds as the server found them (image decides, pixel outlines: the rule of `metauas segment`);
// moving the slider sets both, like `metauas segment --threshold T`
const state = { prompts: [], queries: [], response: null, maps: new Map(), image: null, pixel: null, moved: false };
const $ = (id) => document.getElementById(id);

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}

function setFiles(kind, files) {
  state[kind] = files;
  const thumbs = $(kind === "prompts" ? "prompt-thumbs" : "query-thumbs");
  thumbs.replaceChildren(...files.map((f) => {
    const fig = document.createElement("figure");
    const img = document.createElement("img");
    img.src = URL.createObjectURL(f.blob);
    img.alt = f.name;
    const cap = document.createElement("figcaption");
    cap.textContent = f.name;
    fig.append(img, cap);
    return fig;
  }));
}

async function loadExample(example) {
  const get = async (url) => {
    const r = await fetch(url);
    if (!r.ok) throw new Error(`cannot load example ${url}`);
    return { name: url.split("/").pop(), blob: await r.blob() };
  };
  setFiles("prompts", [await get(example.prompt)]);
  setFiles("queries", [await get(example.query)]);
}

async function init() {
  $("prompt-input").addEventListener("change", (e) =>
    setFiles("prompts", [...e.target.files].map((f) => ({ name: f.name, blob: f }))));
  $("query-input").addEventListener("change", (e) =>
    setFiles("queries", [...e.target.files].map((f) => ({ name: f.name, blob: f }))));
  $("segment-button").addEventListener("click", () => segment());
  $("threshold").addEventListener("input", () => { state.moved = true; applyThreshold(); });
  $("download-button").addEventListener("click", () => downloadZip());
  $("json-button").addEventListener("click", () => downloadJson());
  try {
    const info = await (await fetch("/api/info")).json();
    state.info = info;
    $("model-info").textContent =
      `model ${info.model} · backend ${info.backend} · input ${info.size}×${info.size} px · ` +
      `up to ${info.limits.max_queries} queries, ${(info.limits.max_file_bytes / 1048576).toFixed(0)} MiB per file`;
    $("untrained-warning").hidden = !info.untrained;
    if (info.examples.length) {
      const example = info.examples[0];
      $("example-button").hidden = false;
      $("example-button").textContent = `Load example pair (${example.name})`;
      $("example-button").addEventListener("click", () => loadExample(example).catch((e) => showError(e.message)));
      await loadExample(example); // preloaded: "Segment" works right away
    }
  } catch (e) {
    showError(`cannot reach the server: ${e.message}`);
  }
}

function formData(extra) {
  const form = new FormData();
  state.prompts.forEach((f) => form.append("prompt", f.blob, f.name));
  state.queries.forEach((f) => form.append("query", f.blob, f.name));
  Object.entries(extra || {}).forEach(([k, v]) => form.append(k, v));
  if ($("pool-mode").checked) form.append("prompt_mode", "pool");
  form.append("tile", $("tile-mode").checked ? "auto" : "off");
  return form;
}

async function post(extra) {
  const response = await fetch("/api/segment", { method: "POST", body: formData(extra) });
  if (!response.ok) {
    let message = `request failed (HTTP ${response.status})`;
    try { message = (await response.json()).error || message; } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

async function segment() {
  showError("");
  if (!state.prompts.length) return showError("Choose a normal image first.");
  if (!state.queries.length) return showError("Choose at least one image to inspect.");
  $("segment-button").disabled = true;
  $("busy").hidden = false;
  try {
    const data = await (await post()).json();
    state.response = data;
    const t = data.threshold ?? 0.5;
    state.image = t;
    state.pixel = data.pixel_threshold ?? t;
    state.moved = data.threshold === null;  // no server threshold: the slider value is used as is
    $("threshold").value = t;
    $("threshold-source").textContent = data.threshold === null
      ? "(no calibrated threshold for this normal image: 0.5 is a guess; run `metauas calibrate`)"
      : `(default from ${data.threshold_source})`;
    await render(data);
    applyThreshold();
    $("results-section").hidden = false;
  } catch (e) {
    showError(e.message);
  } finally {
    $("segment-button").disabled = false;
    $("busy").hidden = true;
  }
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("cannot decode image"));
    img.src = src;
  });
}

async function render(data) {
  state.maps.clear();
  const cards = [];
  for (const r of data.results) {
    const card = document.createElement("article");
    card.className = "card";
    card.dataset.name = r.name;
    const title = document.createElement("h3");
    title.textContent = `${r.filename} (${r.width}×${r.height})`;
    const stack = document.createElement("div");
    stack.className = "stack";
    const img = document.createElement("img");
    img.className = "overlay";
    img.alt = `anomaly heat map of ${r.filename}`;
    img.src = r.overlay;
    const canvas = document.createElement("canvas");
    stack.append(img, canvas);
    const meta = document.createElement("div");
    meta.className = "meta";
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `score ${r.score.toFixed(3)}`;
    score.dataset.score = r.score;
    if (r.prompts && r.prompts.length) score.title = `compared with: ${r.prompts.join(", ")}`;
    const badge = document.createElement("span");
    badge.className = "badge";
    const links = document.createElement("span");
    const overlayLink = document.createElement("a");
    overlayLink.href = r.overlay;
    overlayLink.download = `${r.name}_overlay.png`;
    overlayLink.textContent = "overlay.png";
    links.append(overlayLink);
    meta.append(score, badge, links);
    card.append(title, stack, meta);
    cards.push(card);
    const mapImg = await loadImage(r.map);
    const off = document.createElement("canvas");
    off.width = mapImg.naturalWidth;
    off.height = mapImg.naturalHeight;
    const ctx = off.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(mapImg, 0, 0);
    const pixels = ctx.getImageData(0, 0, off.width, off.height).data;
    const values = new Uint8Array(off.width * off.height);
    for (let i = 0; i < values.length; i++) values[i] = pixels[4 * i];
    canvas.width = off.width;
    canvas.height = off.height;
    state.maps.set(r.name, { values, width: off.width, height: off.height, canvas, badge, score: r.score });
  }
  $("results").replaceChildren(...cards);
}

function currentThresholds() {
  const t = parseFloat($("threshold").value);
  return state.moved || state.image === null ? { image: t, pixel: t } : { image: state.image, pixel: state.pixel };
}

function applyThreshold() {
  const { image: t, pixel } = currentThresholds();
  $("threshold-value").textContent = t.toFixed(3);
  const level = pixel * 255;
  for (const m of state.maps.values()) {
    const anomalous = m.score > t;
    m.badge.textContent = anomalous ? "anomalous" : "normal";
    m.badge.className = `badge ${anomalous ? "anomalous" : "normal"}`;
    const ctx = m.canvas.getContext("2d");
    const out = ctx.createImageData(m.width, m.height);
    const w = m.width, h = m.height, v = m.values;
    for (let y = 0; y < h; y++) {
      for (let x = 0; x < w; x++) {
        const i = y * w + x;
        if (v[i] <= level) continue;
        const edge = x === 0 || y === 0 || x === w - 1 || y === h - 1 ||
          v[i - 1] <= level || v[i + 1] <= level || v[i - w] <= level || v[i + w] <= level;
        out.data[4 * i] = out.data[4 * i + 1] = out.data[4 * i + 2] = 255;
        out.data[4 * i + 3] = edge ? 255 : 40;
      }
    }
    ctx.putImageData(out, 0, 0);
  }
}

function saveBlob(blob, name) {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(blob);
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
}

async function downloadZip() {
  showError("");
  try {
    // unmoved slider: let the server apply its own thresholds (stored calibration: image and pixel)
    const response = await post(state.moved ? { format: "zip", threshold: $("threshold").value } : { format: "zip" });
    saveBlob(await response.blob(), "metauas_results.zip");
  } catch (e) {
    showError(e.message);
  }
}

function downloadJson() {
  if (!state.response) return;
  const { image: t, pixel } = currentThresholds();
  const results = state.response.results.map(({ overlay, map, ...rest }) =>
    ({ ...rest, decision: rest.score > t ? "anomalous" : "normal" }));
  const payload = { ...state.response, threshold: t, pixel_threshold: pixel,
                    threshold_source: state.moved ? "page" : state.response.threshold_source, results };
  saveBlob(new Blob([JSON.stringify(payload, null, 2)], { type: "application/json" }), "results.json");
}

init();
