// fnn Playground: draws what the server computes with fnn; no computation of its own.
"use strict";

const CHOICES = {
  learning_rate: [0.00001, 0.0001, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3, 10],
  l2: [0, 0.00001, 0.0001, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3, 10],
  steps_per_frame: [1, 2, 5, 10, 20, 50],
};
const FEEDBACK_NAMES = {
  backprop: "backprop: B = W",
  random: "feedback alignment: fixed random B",
  sign: "sign-symmetric: B = sign(W)",
};
const ORANGE = [245, 147, 34];
const BLUE = [8, 119, 189];
const WHITE = [232, 234, 235];
const NODE = 40; // px, a neuron's heat map

const pg = {
  data: null, // /api/dataset
  frame: null, // the latest /api/step answer
  playing: false,
  example: 0, // the selected point (index into data.points)
  history: [], // [step, train loss, test loss]
  stats: { frames: 0, fps: 0, times: [] },
  nodes: [], // per layer (0 = features), per unit: {el, canvas, bar, text, x, y}
  edges: [], // per layer l >= 1: [j][i] -> svg line
};
window.playground = pg;

// ------------------------------------------------------------------ server calls, one at a time

let queue = Promise.resolve();
function api(method, path, body, type = "application/json") {
  const run = async () => {
    const init = { method, headers: {} };
    if (body !== undefined) {
      init.headers["Content-Type"] = type;
      init.body = type === "application/json" ? JSON.stringify(body) : body;
    }
    const response = await fetch(path, init);
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
    return answer;
  };
  const result = queue.then(run, run);
  queue = result.catch(() => undefined);
  return result;
}

function showError(err) {
  const box = document.getElementById("message");
  box.textContent = err ? String(err.message || err) : "";
  box.classList.toggle("shown", Boolean(err));
}

// ------------------------------------------------------------------ colours and images

function colour(v) { // v in [-1, 1]: orange, white, blue (the Playground's)
  const t = Math.abs(v), c = v < 0 ? ORANGE : BLUE;
  return [0, 1, 2].map((k) => Math.round(WHITE[k] + (c[k] - WHITE[k]) * t));
}
// The served bytes q = round((v + 1) * 127.5), mapped to colours once.
const PALETTE = new Uint8ClampedArray(256 * 4);
for (let q = 0; q < 256; q++) PALETTE.set([...colour(q / 127.5 - 1), 255], 4 * q);

function decode(b64) {
  const raw = atob(b64), out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

const offscreen = {};
function paintMap(ctx, bytes, offset, n, w, h) {
  let off = offscreen[n];
  if (!off) {
    off = document.createElement("canvas");
    off.width = off.height = n;
    offscreen[n] = off;
  }
  const octx = off.getContext("2d"), img = octx.createImageData(n, n);
  for (let i = 0; i < n * n; i++) {
    const q = 4 * bytes[offset + i];
    img.data[4 * i] = PALETTE[q];
    img.data[4 * i + 1] = PALETTE[q + 1];
    img.data[4 * i + 2] = PALETTE[q + 2];
    img.data[4 * i + 3] = 255;
  }
  octx.putImageData(img, 0, 0);
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(off, 0, 0, w, h);
}

function fmt(v, digits = 3) {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  if (v !== 0 && Math.abs(v) < 0.001) return v.toExponential(1);
  return v.toFixed(digits);
}

// ------------------------------------------------------------------ controls

function setting(id) { return document.getElementById(id); }

function fillSelect(id, values, labels = {}) {
  const el = setting(id);
  el.innerHTML = "";
  for (const v of values) {
    const o = document.createElement("option");
    o.value = String(v);
    o.textContent = labels[v] || String(v);
    el.appendChild(o);
  }
}

function buildControls(options) {
  fillSelect("learning_rate", CHOICES.learning_rate);
  fillSelect("l2", CHOICES.l2);
  fillSelect("steps_per_frame", CHOICES.steps_per_frame);
  fillSelect("activation", options.activations, { identity: "linear", leaky_relu: "leaky ReLU", relu: "ReLU" });
  fillSelect("optimizer", options.optimizers);
  fillSelect("loss", Object.keys(options.losses), options.losses);
  fillSelect("feedback", options.feedback, FEEDBACK_NAMES);
  for (const id of ["learning_rate", "l2", "steps_per_frame"]) {
    setting(id).addEventListener("change", (e) => configure({ [id]: Number(e.target.value) }));
  }
  for (const id of ["activation", "optimizer", "loss", "feedback"]) {
    setting(id).addEventListener("change", (e) => configure({ [id]: e.target.value }));
  }
  for (const [id, scale] of [["train_ratio", 100], ["noise", 100], ["batch_size", 1]]) {
    const el = setting(id);
    el.addEventListener("input", () => {
      setting(id + "-value").textContent = el.value;
    });
    el.addEventListener("change", () => configure({ [id]: Number(el.value) / scale }));
  }
  const box = document.getElementById("datasets");
  for (const name of options.datasets) {
    const c = document.createElement("canvas");
    c.width = c.height = 48;
    c.className = "dataset";
    c.dataset.name = name;
    c.title = name;
    drawThumbnail(c, name);
    c.addEventListener("click", () => configure({ dataset: name }));
    box.appendChild(c);
  }
  setting("regenerate").addEventListener("click",
    () => configure({ seed: (pg.data.config.seed + 1) % 2147483647 }));
  setting("play").addEventListener("click", () => (pg.playing ? pause() : play()));
  setting("step").addEventListener("click", () => { pause(); stepOnce(1); });
  setting("reset").addEventListener("click", () => {
    pause();
    api("POST", "/api/reset", {}).then(applyRebuilt, showError);
  });
  setting("add-layer").addEventListener("click", () => {
    const h = pg.data.config.hidden;
    if (h.length < options.max_layers) configure({ hidden: [...h, 2] });
  });
  setting("remove-layer").addEventListener("click", () => {
    const h = pg.data.config.hidden;
    if (h.length > 0) configure({ hidden: h.slice(0, -1) });
  });
  setting("delta-mode").addEventListener("change", () => refresh());
  setting("show-test").addEventListener("change", () => drawRegion());
  setting("region").addEventListener("click", selectAt);
  setting("csv-file").addEventListener("change", upload);
  setting("export").addEventListener("click", () => updateSnippet());
}

function drawThumbnail(c, name) {
  const ctx = c.getContext("2d"), s = 48 / 12;
  ctx.fillStyle = "#f4f4f4";
  ctx.fillRect(0, 0, 48, 48);
  const dot = (x, y, cls) => {
    ctx.fillStyle = cls ? "rgb(8,119,189)" : "rgb(245,147,34)";
    ctx.fillRect(24 + x * s - 1, 24 - y * s - 1, 2.5, 2.5);
  };
  let seed = 7;
  const rnd = () => ((seed = (seed * 16807) % 2147483647) / 2147483647);
  for (let i = 0; i < 140; i++) {
    const u = rnd() * 10 - 5, v = rnd() * 10 - 5;
    if (name === "circle") {
      const r = Math.hypot(u, v);
      if (r < 2.5 || r > 3.5) dot(u, v, r < 2.5);
    } else if (name === "xor") dot(u, v, u * v >= 0);
    else if (name === "gaussians") {
      const cls = i % 2, m = cls ? 2 : -2;
      dot(m + (rnd() - 0.5) * 2.5, m + (rnd() - 0.5) * 2.5, cls);
    } else {
      const t = (i % 70) / 70, cls = i < 70, a = 1.75 * 2 * Math.PI * t + (cls ? 0 : Math.PI);
      dot(5 * t * Math.sin(a), 5 * t * Math.cos(a), cls);
    }
  }
}

function syncControls() {
  const c = pg.data.config;
  for (const id of ["learning_rate", "l2", "steps_per_frame", "activation", "optimizer", "loss", "feedback"]) {
    setting(id).value = String(c[id]);
  }
  for (const [id, scale] of [["train_ratio", 100], ["noise", 100], ["batch_size", 1]]) {
    setting(id).value = String(Math.round(c[id] * scale));
    setting(id + "-value").textContent = setting(id).value;
  }
  for (const el of document.querySelectorAll("canvas.dataset")) {
    el.classList.toggle("selected", el.dataset.name === c.dataset);
  }
  setting("layer-count").textContent = String(c.hidden.length);
  setting("feedback-note").textContent = "Feedback now: " + FEEDBACK_NAMES[c.feedback] + ".";
  setting("snippet").textContent = pg.data.snippet;
}

function configure(settings) {
  return api("POST", "/api/config", { settings, example: exampleArg() })
    .then(applyRebuilt, showError);
}

function applyRebuilt(answer) {
  showError(null);
  const architecture = JSON.stringify(answer.dataset.layer_sizes) +
    JSON.stringify(answer.dataset.config.features);
  const old = pg.data && (JSON.stringify(pg.data.layer_sizes) + JSON.stringify(pg.data.config.features));
  if (answer.rebuilt !== "none") pg.history = [];
  if (answer.rebuilt === "data" && pg.example >= answer.dataset.y.length) pg.example = 0;
  pg.data = answer.dataset;
  syncControls();
  if (architecture !== old) buildNetwork();
  draw(answer.frame);
}

// ------------------------------------------------------------------ the network

function buildNetwork() {
  const box = setting("network"), svg = setting("edges");
  for (const el of box.querySelectorAll(".node, .layer-control")) el.remove();
  svg.innerHTML = "";
  const c = pg.data.config, features = pg.data.options.features;
  const columns = [features, ...c.hidden.map((n) => Array.from({ length: n }, (_, j) => j)), [0, 1]];
  const left = 62; // room for the feature names
  const width = box.clientWidth || 600, gap = (width - left - NODE - 70) / (columns.length - 1);
  const rowHeight = NODE + 22;
  const height = Math.max(...columns.map((col) => col.length)) * rowHeight + 40;
  box.style.height = height + "px";
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  pg.nodes = columns.map((units, layer) => units.map((unit, j) => {
    const x = left + layer * gap, y = 36 + j * rowHeight;
    return makeNode(box, layer, j, unit, x, y, layer === columns.length - 1);
  }));
  // hidden layers' +/- buttons
  c.hidden.forEach((n, k) => {
    const ctl = document.createElement("div");
    ctl.className = "layer-control";
    ctl.style.left = left + (k + 1) * gap - 6 + "px";
    ctl.innerHTML = `<button title="Add a neuron">+</button><button title="Remove a neuron">&minus;</button><span>${n} neurons</span>`;
    const [add, remove] = ctl.querySelectorAll("button");
    add.addEventListener("click", () => {
      if (n < pg.data.options.max_width) configure({ hidden: c.hidden.map((m, i) => (i === k ? m + 1 : m)) });
    });
    remove.addEventListener("click", () => {
      if (n > 1) configure({ hidden: c.hidden.map((m, i) => (i === k ? m - 1 : m)) });
    });
    box.appendChild(ctl);
  });
  // edges: from every active feature / unit of layer l-1 to every unit of layer l
  const active = features.map((f) => c.features.includes(f));
  pg.edges = [];
  const sources0 = pg.nodes[0].filter((_, i) => active[i]);
  for (let l = 1; l < pg.nodes.length; l++) {
    const sources = l === 1 ? sources0 : pg.nodes[l - 1];
    pg.edges[l] = pg.nodes[l].map((to) => sources.map((from) => {
      const line = document.createElementNS("http://www.w3.org/2000/svg", "line");
      line.setAttribute("x1", from.x + NODE);
      line.setAttribute("y1", from.y + NODE / 2);
      line.setAttribute("x2", to.x);
      line.setAttribute("y2", to.y + NODE / 2);
      svg.appendChild(line);
      return line;
    }));
  }
  pg.nodes[0].forEach((node, i) => {
    node.el.classList.toggle("inactive", !active[i]);
    node.el.title = `${features[i]}: click to ${active[i] ? "remove" : "add"} this input`;
    node.el.addEventListener("click", () => toggleFeature(features[i]));
    const n = pg.data.neuron_grid;
    paintMap(node.canvas.getContext("2d"), decode(pg.data.feature_maps[features[i]]), 0, n, NODE, NODE);
  });
}

function makeNode(box, layer, j, unit, x, y, output) {
  const el = document.createElement("div");
  el.className = "node" + (layer === 0 ? " feature" : "") + (output ? " output" : "");
  el.style.left = x + "px";
  el.style.top = y + "px";
  el.dataset.layer = layer;
  el.dataset.unit = j;
  const canvas = document.createElement("canvas");
  canvas.width = canvas.height = NODE;
  el.appendChild(canvas);
  const label = document.createElement("div");
  label.className = "node-label";
  if (layer === 0) label.textContent = unit;
  else if (output) label.textContent = `P(class ${j})`;
  el.appendChild(label);
  let bar = null, text = null;
  if (layer > 0) {
    const delta = document.createElement("div");
    delta.className = "delta";
    bar = document.createElement("span");
    bar.className = "bar";
    text = document.createElement("span");
    text.className = "delta-text";
    delta.append(bar, text);
    el.appendChild(delta);
  }
  box.appendChild(el);
  return { el, canvas, bar, text, x, y };
}

function toggleFeature(name) {
  const now = pg.data.config.features;
  const next = now.includes(name) ? now.filter((f) => f !== name) : [...now, name];
  if (next.length) configure({ features: next });
}

function drawNetwork(frame) {
  const n = pg.data.neuron_grid, maps = decode(frame.neurons);
  let offset = 0;
  const deltas = frame.deltas, scale = Math.max(1e-12, ...deltas.flat().map(Math.abs));
  for (let l = 1; l < pg.nodes.length; l++) {
    pg.nodes[l].forEach((node, j) => {
      paintMap(node.canvas.getContext("2d"), maps, offset, n, NODE, NODE);
      offset += n * n;
      const d = deltas[l - 1][j];
      node.el.dataset.delta = String(d);
      node.text.textContent = "δ " + fmt(d, 4);
      node.bar.style.width = Math.round(34 * Math.abs(d) / scale) + "px";
      node.bar.style.background = d < 0 ? "rgb(245,147,34)" : "rgb(8,119,189)";
    });
    const W = frame.weights[l - 1].W;
    pg.edges[l].forEach((row, j) => row.forEach((line, i) => {
      const w = W[j][i];
      line.setAttribute("stroke", w < 0 ? "rgb(245,147,34)" : "rgb(8,119,189)");
      line.setAttribute("stroke-width", Math.min(6, 0.4 + Math.abs(w) * 1.5).toFixed(2));
      line.setAttribute("stroke-opacity", Math.min(1, 0.25 + Math.abs(w) / 2).toFixed(2));
    }));
  }
}

// ------------------------------------------------------------------ the data and the output

function toCanvas(p, w, h) {
  const [[x0, x1], [y0, y1]] = pg.data.domain;
  return [(p[0] - x0) / (x1 - x0) * w, (y1 - p[1]) / (y1 - y0) * h];
}

function drawRegion() {
  const frame = pg.frame, canvas = setting("region"), ctx = canvas.getContext("2d");
  if (!frame) return;
  const w = canvas.width, h = canvas.height;
  paintMap(ctx, decode(frame.region), 0, pg.data.grid, w, h);
  const test = new Set(pg.data.test), outliers = new Set(frame.outliers);
  const showTest = setting("show-test").checked;
  pg.data.points.forEach((p, i) => {
    const isTest = test.has(i);
    if (isTest && !showTest) return;
    const [x, y] = toCanvas(p, w, h);
    ctx.beginPath();
    ctx.arc(x, y, 3, 0, 2 * Math.PI);
    ctx.fillStyle = pg.data.y[i] ? "rgb(8,119,189)" : "rgb(245,147,34)";
    ctx.fill();
    ctx.lineWidth = 1;
    ctx.strokeStyle = isTest ? "#000" : "#fff";
    ctx.stroke();
    if (outliers.has(i)) {
      ctx.beginPath();
      ctx.arc(x, y, 6, 0, 2 * Math.PI);
      ctx.strokeStyle = "#d00";
      ctx.lineWidth = 1.5;
      ctx.stroke();
    }
  });
  if (exampleArg() !== null) {
    const [x, y] = toCanvas(pg.data.points[pg.example], w, h);
    ctx.beginPath();
    ctx.arc(x, y, 9, 0, 2 * Math.PI);
    ctx.strokeStyle = "#000";
    ctx.lineWidth = 2;
    ctx.stroke();
  }
}

function drawLossChart() {
  const canvas = setting("loss-chart"), ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, hist = pg.history;
  ctx.clearRect(0, 0, w, h);
  if (hist.length < 2) return;
  const top = Math.max(...hist.flatMap((r) => [r[1], r[2]]).filter(Number.isFinite), 1e-9);
  const s0 = hist[0][0], s1 = Math.max(hist[hist.length - 1][0], s0 + 1);
  for (const [k, style] of [[1, "#888"], [2, "#000"]]) {
    ctx.beginPath();
    hist.forEach((r, i) => {
      const x = (r[0] - s0) / (s1 - s0) * w, y = h - 4 - (r[k] / top) * (h - 8);
      if (i) ctx.lineTo(x, y); else ctx.moveTo(x, y);
    });
    ctx.strokeStyle = style;
    ctx.lineWidth = 1.5;
    ctx.stroke();
  }
}

function drawHistogram(frame) {
  const canvas = setting("histogram"), ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, bins = 24;
  const norms = frame.grad_norms.filter(Number.isFinite);
  ctx.clearRect(0, 0, w, h);
  const top = Math.max(...norms, 1e-12), counts = new Array(bins).fill(0);
  for (const v of norms) counts[Math.min(bins - 1, Math.floor(v / top * bins))]++;
  const most = Math.max(...counts), fence = quartileFence(norms);
  counts.forEach((c, k) => {
    const bh = c / most * (h - 18);
    ctx.fillStyle = k / bins * top > fence ? "#d00" : "#5a6f8a";
    ctx.fillRect(k * w / bins + 1, h - 14 - bh, w / bins - 2, bh);
  });
  ctx.fillStyle = "#333";
  ctx.font = "11px sans-serif";
  ctx.fillText("0", 1, h - 2);
  ctx.fillText(fmt(top, 3), w - 40, h - 2);
  setting("histogram-info").textContent =
    `${frame.outliers.length} outliers (above Q3 + 1.5 IQR), ringed in red on the data.`;
}

function quartileFence(values) {
  const s = [...values].sort((a, b) => a - b), q = (p) => s[Math.floor(p * (s.length - 1))];
  return q(0.75) + 1.5 * (q(0.75) - q(0.25));
}

function drawExampleInfo(frame) {
  const info = setting("example-info");
  if (exampleArg() === null) {
    info.textContent = "Deltas: the mean over the last minibatch. Click a point to see its own.";
    return;
  }
  const i = pg.example, p = pg.data.points[i];
  const split = new Set(pg.data.test).has(i) ? "test" : "training";
  info.textContent = `Selected: ${split} point ${i} at (${fmt(p[0], 2)}, ${fmt(p[1], 2)}), ` +
    `label ${pg.data.y[i]}, P(class 1) = ${fmt(frame.points_p1[i], 3)}.`;
}

function draw(frame) {
  pg.frame = frame;
  if (frame.train_loss === null && frame.step > 0) {
    pause();
    showError("The training loss is no longer a finite number: training diverged. " +
      "Lower the learning rate (or L2) and press reset.");
  }
  const last = pg.history[pg.history.length - 1];
  if (!last || last[0] !== frame.step) pg.history.push([frame.step, frame.train_loss, frame.test_loss]);
  if (pg.history.length > 2000) pg.history = pg.history.filter((_, i) => i % 2 === 0);
  setting("step-count").textContent = frame.step.toLocaleString("en");
  setting("epoch").textContent = frame.epoch.toFixed(1);
  setting("train-loss").textContent = fmt(frame.train_loss);
  setting("test-loss").textContent = fmt(frame.test_loss);
  setting("train-accuracy").textContent = fmt(frame.train_accuracy);
  setting("test-accuracy").textContent = fmt(frame.test_accuracy);
  drawNetwork(frame);
  drawRegion();
  drawLossChart();
  drawHistogram(frame);
  drawExampleInfo(frame);
  const now = performance.now(), times = pg.stats.times;
  times.push(now);
  while (times.length && now - times[0] > 2000) times.shift();
  pg.stats.frames++;
  pg.stats.fps = times.length > 1 ? (times.length - 1) / ((now - times[0]) / 1000) : 0;
  setting("fps").textContent = pg.stats.fps.toFixed(0);
}

// ------------------------------------------------------------------ play, step, select, upload

function exampleArg() { return setting("delta-mode").value === "mean" ? null : pg.example; }

function stepOnce(steps) {
  const t0 = performance.now();
  return api("POST", "/api/step", { steps, example: exampleArg() }).then((frame) => {
    const t1 = performance.now();
    draw(frame);
    const s = pg.stats, t2 = performance.now();
    s.requestMs = s.requestMs === undefined ? t1 - t0 : 0.9 * s.requestMs + 0.1 * (t1 - t0);
    s.drawMs = s.drawMs === undefined ? t2 - t1 : 0.9 * s.drawMs + 0.1 * (t2 - t1);
  });
}

function refresh() { return stepOnce(0).catch(showError); }

function play() {
  pg.playing = true;
  setting("play").innerHTML = "&#x275A;&#x275A;";
  setting("play").classList.add("playing");
  const loop = async () => {
    while (pg.playing) {
      try {
        await stepOnce(pg.data.config.steps_per_frame);
      } catch (err) {
        showError(err);
        pause();
      }
      await new Promise((resolve) => requestAnimationFrame(resolve));
    }
  };
  loop();
}

function pause() {
  pg.playing = false;
  setting("play").innerHTML = "&#x25B6;";
  setting("play").classList.remove("playing");
  updateSnippet();
}

function updateSnippet() {
  fetch("/api/snippet").then((r) => r.text()).then((t) => { setting("snippet").textContent = t; });
}

function selectAt(event) {
  const canvas = setting("region"), rect = canvas.getBoundingClientRect();
  const cx = (event.clientX - rect.left) * canvas.width / rect.width;
  const cy = (event.clientY - rect.top) * canvas.height / rect.height;
  const test = new Set(pg.data.test), showTest = setting("show-test").checked;
  let best = -1, bestD = Infinity;
  pg.data.points.forEach((p, i) => {
    if (test.has(i) && !showTest) return;
    const [x, y] = toCanvas(p, canvas.width, canvas.height), d = (x - cx) ** 2 + (y - cy) ** 2;
    if (d < bestD) { bestD = d; best = i; }
  });
  if (best < 0) return;
  pg.example = best;
  setting("delta-mode").value = "example";
  refresh();
}

function upload(event) {
  const file = event.target.files[0];
  if (!file) return;
  if (file.size > pg.data.options.max_upload_bytes) {
    showError(`the file has ${file.size} bytes; the limit is ${pg.data.options.max_upload_bytes}`);
    return;
  }
  pause();
  file.text().then((text) => api("POST", "/api/upload", text, "text/csv"))
    .then((answer) => { pg.example = 0; applyRebuilt(answer); }, showError)
    .finally(() => { event.target.value = ""; });
}

// ------------------------------------------------------------------ start

api("GET", "/api/dataset").then((dataset) => {
  buildControls(dataset.options);
  pg.data = dataset;
  syncControls();
  buildNetwork();
  return refresh();
}).then(() => { document.body.dataset.ready = "1"; }, showError);
