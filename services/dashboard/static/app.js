/* streamlearn live dashboard: reads the query catalogue from /api/queries, runs every query through the
 * dashboard's Prometheus proxy each refresh, and draws the charts with uPlot. Every number shown carries the
 * query id, the series labels, the evaluation time and Prometheus's raw value in data attributes, and
 * window.streamlearnDashboard holds the last frame and the uPlot instances, so a test can compare the page
 * with Prometheus. */
"use strict";
(function () {
  const D = (window.streamlearnDashboard = { spec: null, frame: null, frames: 0, plots: {}, seriesKeys: {}, errors: 0 });
  const RANGES = [["2m", 120], ["5m", 300], ["15m", 900], ["1h", 3600], ["6h", 21600]];
  const PALETTE = ["#6ea8fe", "#3fb97f", "#e8b14a", "#c77dff", "#4dd4d4", "#ff8a5b", "#f06bb0", "#a3be8c"];
  const OUTCOME_COLORS = {
    valid: "--good", invalid: "--bad", duplicate: "--warn", joined: "--good", held: "--accent", late: "--warn",
    orphan: "#c77dff", misrouted: "#ff8a5b",
  };
  const MAX_DRIFTS_LISTED = 20;
  const params = new URLSearchParams(location.search);
  let range = parseDuration(params.get("range")) || 900;
  let paused = false;
  let timer = null;
  const modelColors = new Map();

  // ---- small helpers --------------------------------------------------------------------------------
  function parseDuration(text) {
    const m = /^(\d+)([smhd])$/.exec(text || "");
    return m ? Number(m[1]) * { s: 1, m: 60, h: 3600, d: 86400 }[m[2]] : null;
  }
  function cssVar(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }
  function color(nameOrVar) {
    return nameOrVar.startsWith("--") ? cssVar(nameOrVar) : nameOrVar;
  }
  function modelColor(model) {
    if (!modelColors.has(model)) modelColors.set(model, PALETTE[modelColors.size % PALETTE.length]);
    return modelColors.get(model);
  }
  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else if (key === "data") Object.assign(node.dataset, value);
      else if (key === "style") node.setAttribute("style", value);
      else node.setAttribute(key, value);
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }
  /** How a value is shown: the query's scale, decimals and unit, except milliseconds of a second or more. */
  function display(query, value) {
    if (query.unit === "ms" && Number.isFinite(value) && Math.abs(value * query.scale) >= 1000) {
      return { scale: query.scale / 1000, decimals: 2, unit: "s" };
    }
    return { scale: query.scale, decimals: query.decimals, unit: query.unit };
  }
  function format(value, shown) {
    if (!Number.isFinite(value)) return "–";
    return (value * shown.scale).toLocaleString("en-US", {
      minimumFractionDigits: shown.decimals, maximumFractionDigits: shown.decimals });
  }
  function clock(t) {
    return new Date(t * 1000).toLocaleTimeString("en-GB", { hour12: false });
  }
  /** A number as shown (and its unit), with what a test needs to ask Prometheus the same question. */
  function num(query, labels, time, raw) {
    const value = parseFloat(raw);
    const shown = display(query, value);
    const number = h("span", {
      class: "num",
      data: { query: query.id, labels: JSON.stringify(labels), time: String(time), value: raw,
              scale: String(shown.scale), decimals: String(shown.decimals) },
    }, format(value, shown));
    return shown.unit && Number.isFinite(value)
      ? h("span", { class: "quantity" }, number, h("span", { class: "unit" }, shown.unit)) : number;
  }
  function flag(query, labels, time, raw) {
    const yes = parseFloat(raw) === 1;
    return h("span", {
      class: "badge flag " + (yes ? "yes" : "no"),
      data: { query: query.id, labels: JSON.stringify(labels), time: String(time), value: raw },
    }, yes ? "yes" : "no");
  }
  function stripName(labels) {
    const copy = Object.assign({}, labels);
    delete copy.__name__;
    return copy;
  }

  // ---- Prometheus through the dashboard's proxy -----------------------------------------------------
  async function prom(path, args) {
    const response = await fetch(path + "?" + new URLSearchParams(args));
    let answer;
    try { answer = await response.json(); } catch (e) { throw new Error(`${path}: HTTP ${response.status}`); }
    if (answer.status !== "success") throw new Error(answer.error || `${path}: HTTP ${response.status}`);
    return answer.data.result;
  }

  async function readFrame() {
    const step = Math.max(1, Math.ceil(range / 240));
    // a second behind the clock, so a scrape that started before ``end`` has been stored when we ask
    const end = Math.floor((Date.now() / 1000 - 1) / step) * step;
    const start = end - range;
    const results = {};
    await Promise.all(D.spec.queries.map(async (q) => {
      results[q.id] = q.kind === "range"
        ? await prom("/api/v1/query_range", { query: q.expr, start, end, step })
        : await prom("/api/v1/query", { query: q.expr, time: end });
    }));
    const xs = [];
    for (let t = start; t <= end; t += step) xs.push(t);
    return { start, end, step, xs, results };
  }

  /** The series of a range query on the frame's x axis: name, labels, values (null where absent), raw values. */
  function seriesOf(frame, query) {
    const list = (frame.results[query.id] || []).map((result) => {
      const labels = stripName(result.metric);
      const name = query.legend ? (labels[query.legend] ?? "") : (query.name || query.id);
      const values = new Array(frame.xs.length).fill(null);
      const raw = new Array(frame.xs.length).fill(null);
      for (const [t, v] of result.values) {
        const i = Math.round((t - frame.start) / frame.step);
        if (i < 0 || i >= values.length) continue;
        const parsed = parseFloat(v);
        values[i] = Number.isFinite(parsed) ? parsed * query.scale : null;
        raw[i] = v;
      }
      return { query, name, labels, values, raw };
    });
    return list.sort((a, b) => a.name.localeCompare(b.name));
  }
  function lastPoint(frame, series) {
    for (let i = series.raw.length - 1; i >= 0; i--) if (series.raw[i] !== null) return [frame.xs[i], series.raw[i]];
    return null;
  }

  // ---- charts -----------------------------------------------------------------------------------------
  function drawChart(panelId, frame, lines, extra) {
    const box = document.getElementById("chart-" + panelId);
    const empty = box.querySelector(".empty");
    if (!lines.length) {
      if (D.plots[panelId]) { D.plots[panelId].destroy(); delete D.plots[panelId]; }
      if (!empty) box.append(h("div", { class: "empty" }, "no data in this time range"));
      return;
    }
    if (empty) empty.remove();
    const data = [frame.xs, ...lines.map((l) => l.values)];
    const signature = document.documentElement.dataset.theme + "|" + range + "|" +
      lines.map((l) => `${l.query.id}:${l.name}:${l.stroke}`).join(";");
    let plot = D.plots[panelId];
    if (plot && plot._signature === signature) {
      plot.setData(data);
    } else {
      if (plot) plot.destroy();
      const axis = { stroke: cssVar("--axis"), grid: { stroke: cssVar("--grid"), width: 1 },
                     ticks: { stroke: cssVar("--grid"), width: 1 }, font: "11px " + cssVar("--font") };
      const zero = { range: (u, min, max) => [Math.min(0, min), max > 0 ? max * 1.1 : 1] };
      const seconds = range <= 900;
      const xAxis = Object.assign({}, axis, {
        space: 70,
        values: (u, ticks) => ticks.map((t) => new Date(t * 1000).toLocaleTimeString("en-GB", seconds
          ? { hour: "2-digit", minute: "2-digit", second: "2-digit" } : { hour: "2-digit", minute: "2-digit" })),
      });
      plot = new uPlot({
        width: box.clientWidth, height: box.clientHeight,
        legend: { show: false },
        cursor: { drag: { x: false, y: false }, points: { size: 6 } },
        scales: { x: { time: true }, y: extra && extra.zero ? zero : {} },
        axes: [xAxis, Object.assign({}, axis, {
          size: 54,
          values: (u, ticks) => ticks.map((v) => v.toLocaleString("en-US", { maximumFractionDigits: 3 })),
        })],
        series: [{}, ...lines.map((l) => ({
          label: l.name, stroke: l.stroke, width: l.width || 1.6, dash: l.dash, points: { show: false },
        }))],
        hooks: (extra && extra.hooks) || {},
      }, data, box);
      plot._signature = signature;
      D.plots[panelId] = plot;
    }
    D.seriesKeys[panelId] = lines.map((l) => ({ query: l.query.id, labels: l.labels, name: l.name }));
  }

  function legendItem(stroke, dashed, ...content) {
    const swatch = h("span", { class: "swatch" + (dashed ? " dashed" : ""),
                               style: dashed ? `border-color:${stroke}` : `background:${stroke}` });
    return h("span", { class: "item" }, swatch, ...content);
  }

  function query(id) {
    return D.spec.queries.find((q) => q.id === id);
  }

  // ---- the quality chart: models, baselines, drift marks, champion band -----------------------------
  function championSegments(frame) {
    const champion = seriesOf(frame, query("champion"));
    const segments = [];
    frame.xs.forEach((t, i) => {
      const holder = champion.find((s) => s.values[i] === 1);
      const model = holder ? holder.name : null;
      const last = segments[segments.length - 1];
      if (last && last.model === model) last.to = t + frame.step;
      else segments.push({ model, from: t, to: t + frame.step });
    });
    return segments.filter((s) => s.model !== null);
  }
  function driftTimes(frame) {
    const seen = new Map();
    for (const s of seriesOf(frame, query("drift_times"))) {
      for (const raw of s.raw) {
        const t = raw === null ? NaN : parseFloat(raw);
        if (Number.isFinite(t) && t > 0) seen.set(`${s.name}@${raw}`, { model: s.name, time: t, raw, labels: s.labels });
      }
    }
    return [...seen.values()].sort((a, b) => b.time - a.time);
  }
  function drawQualityMarks(u) {
    const q = D.quality;
    if (!q) return;
    const ctx = u.ctx;
    const dpr = window.devicePixelRatio || 1;
    const { left, top, width: plotWidth, height } = u.bbox;
    const band = Math.round(5 * dpr);
    ctx.save();
    for (const seg of q.champions) {
      const x0 = Math.max(left, u.valToPos(seg.from, "x", true));
      const x1 = Math.min(left + plotWidth, u.valToPos(seg.to, "x", true));
      if (x1 <= x0) continue;
      ctx.fillStyle = modelColor(seg.model);
      ctx.fillRect(x0, top, x1 - x0, band);
    }
    ctx.strokeStyle = cssVar("--drift");
    ctx.fillStyle = cssVar("--drift");
    ctx.lineWidth = 1.5 * dpr;
    ctx.font = `${10 * dpr}px ${cssVar("--font")}`;
    ctx.textAlign = "left";  // uPlot leaves its axis alignment on the context
    ctx.textBaseline = "alphabetic";
    // one dashed line per detection; detections close together share one label, right of the last of them
    const xs = q.drifts.filter((d) => d.time >= u.scales.x.min && d.time <= u.scales.x.max)
      .map((d) => ({ x: Math.round(u.valToPos(d.time, "x", true)), model: d.model }))
      .sort((a, b) => a.x - b.x);
    const labels = [];
    for (const { x, model } of xs) {
      ctx.setLineDash([4 * dpr, 3 * dpr]);
      ctx.beginPath();
      ctx.moveTo(x, top + band);
      ctx.lineTo(x, top + height);
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.beginPath();
      ctx.moveTo(x - 5 * dpr, top + band);
      ctx.lineTo(x + 5 * dpr, top + band);
      ctx.lineTo(x, top + band + 7 * dpr);
      ctx.closePath();
      ctx.fill();
      const last = labels[labels.length - 1];
      if (last && x - last.x < 80 * dpr) {
        last.x = x;
        if (!last.models.includes(model)) last.models.push(model);
      } else {
        labels.push({ x, models: [model] });
      }
    }
    for (const { x, models } of labels) {
      const text = `drift · ${models.sort().join(", ")}`;
      const width = ctx.measureText(text).width;
      const at = x + 7 * dpr + width > left + plotWidth ? x - 7 * dpr - width : x + 7 * dpr;
      ctx.fillStyle = cssVar("--panel");
      ctx.fillRect(at - 3 * dpr, top + band + 6 * dpr, width + 6 * dpr, 14 * dpr);
      ctx.fillStyle = cssVar("--drift");
      ctx.fillText(text, at, top + band + 17 * dpr);
    }
    ctx.restore();
  }

  function renderQuality(frame) {
    const spec = D.spec;
    const rolling = seriesOf(frame, query("rolling"));
    const cumulative = seriesOf(frame, query("cumulative"));
    const baselines = seriesOf(frame, query("baselines"));
    const models = [...new Set([...rolling, ...cumulative].map((s) => s.name))].sort();
    models.forEach(modelColor);
    const champions = championSegments(frame);
    const currentChampion = champions.length && champions[champions.length - 1].to >= frame.end ? champions[champions.length - 1].model : null;
    D.quality = { champions, drifts: driftTimes(frame), currentChampion };
    const lines = [];
    for (const s of rolling) lines.push(Object.assign(s, { stroke: modelColor(s.name), width: 2.2 }));
    for (const s of cumulative) lines.push(Object.assign(s, { stroke: modelColor(s.name), width: 1.3, dash: [6, 4] }));
    baselines.forEach((s, i) => lines.push(Object.assign(s, { stroke: cssVar("--baseline"), width: 1.4, dash: i ? [2, 3] : [9, 4] })));
    drawChart("quality", frame, lines, { hooks: { draw: [drawQualityMarks] } });

    const legend = document.getElementById("legend-quality");
    legend.replaceChildren();
    for (const model of models) {
      const r = rolling.find((s) => s.name === model);
      const c = cumulative.find((s) => s.name === model);
      const parts = [h("b", {}, model)];
      const recent = spec.group_wide ? `last ${spec.quality_window}` : "rolling";
      for (const [word, s] of [[recent, r], ["cumulative", c]]) {
        const point = s && lastPoint(frame, s);
        if (point) parts.push(h("span", { class: "dim" }, word), num(s.query, s.labels, point[0], point[1]));
      }
      if (model === currentChampion) parts.push(h("span", { class: "champ" }, "champion"));
      legend.append(legendItem(modelColor(model), false, ...parts));
    }
    baselines.forEach((s, i) => {
      const point = lastPoint(frame, s);
      legend.append(legendItem(cssVar("--baseline"), true, h("span", {}, s.name.replace("_", "-")),
                               point ? num(s.query, s.labels, point[0], point[1]) : h("span", { class: "dim" }, "–")));
    });
    if (models.length) {
      legend.append(h("span", { class: "item dim" }, h("span", { class: "band" }), "champion"),
                    h("span", { class: "item dim" }, h("span", { class: "mark" }), "drift detected"));
    } else {
      legend.append(h("span", { class: "dim" }, `no ${spec.metric} yet: the workers have scored no label`));
    }

    const list = document.getElementById("drift-list");
    list.replaceChildren();
    for (const d of D.quality.drifts.slice(0, MAX_DRIFTS_LISTED)) {
      list.append(h("li", { class: "drift", data: { model: d.model, time: d.raw, labels: JSON.stringify(d.labels) } },
                    h("span", { class: "num" }, clock(d.time)), h("b", {}, d.model),
                    h("span", { class: "dim" }, d.time >= frame.start ? "" : "(before this range)")));
    }
    if (!D.quality.drifts.length) list.append(h("li", { class: "none" }, "no drift detected in this range"));
  }

  // ---- the other panels ---------------------------------------------------------------------------------
  function renderLines(panelId, queryIds, frame, colorOf) {
    const lines = [];
    queryIds.forEach((id, qi) => {
      seriesOf(frame, query(id)).forEach((s, si) => {
        lines.push(Object.assign(s, { stroke: colorOf(s, qi + si) }));
      });
    });
    drawChart(panelId, frame, lines, { zero: true });
    const legend = document.getElementById("legend-" + panelId);
    legend.replaceChildren();
    for (const s of lines) {
      const point = lastPoint(frame, s);
      legend.append(legendItem(s.stroke, false, h("span", { class: "name", title: s.name }, s.name || "all"),
                               point ? num(s.query, s.labels, point[0], point[1]) : h("span", { class: "dim" }, "–")));
    }
    return legend;
  }
  const byOutcome = (s, i) => color(OUTCOME_COLORS[s.name] || PALETTE[i % PALETTE.length]);
  const byIndex = (s, i) => PALETTE[i % PALETTE.length];

  function renderDrift(frame) {
    const psi = query("feature_psi");
    const bars = document.getElementById("feature-bars");
    bars.replaceChildren();
    const results = (frame.results.feature_psi || []).slice().sort((a, b) => parseFloat(b.value[1]) - parseFloat(a.value[1]));
    const top = Math.max(0.25, ...results.map((r) => parseFloat(r.value[1])).filter(Number.isFinite));
    for (const r of results) {
      const value = parseFloat(r.value[1]);
      const width = Number.isFinite(value) ? Math.max(1, (100 * value) / top) : 0;
      bars.append(h("span", { class: "name", title: r.metric.feature }, r.metric.feature),
                  h("span", { class: "track" }, h("span", { class: "fill" + (value > 0.2 ? " high" : ""), style: `width:${width}%` })),
                  num(psi, stripName(r.metric), frame.end, r.value[1]));
    }
    if (!results.length) bars.append(h("span", { class: "empty-note" }, "no data-drift scores yet"));
    const pairs = document.getElementById("distribution-psi");
    pairs.replaceChildren();
    const dist = query("distribution_psi");
    for (const r of frame.results.distribution_psi || []) {
      pairs.append(h("span", {}, `${r.metric.distribution} PSI `, num(dist, stripName(r.metric), frame.end, r.value[1])));
    }
  }

  function renderWorkers(frame) {
    const ids = ["scraped", "ready", "kafka_up", "redis_up", "checkpoint_age"];
    const rows = new Map();
    for (const id of ids) {
      for (const r of frame.results[id] || []) {
        const instance = r.metric.instance || "?";
        if (!rows.has(instance)) rows.set(instance, {});
        rows.get(instance)[id] = r;
      }
    }
    const body = document.getElementById("workers-body");
    body.replaceChildren();
    for (const instance of [...rows.keys()].sort()) {
      const row = rows.get(instance);
      const cells = ids.map((id) => {
        const r = row[id];
        if (!r) return h("td", { class: "dim" }, "–");
        const q = query(id);
        if (id === "checkpoint_age") return h("td", {}, num(q, stripName(r.metric), frame.end, r.value[1]));
        return h("td", {}, flag(q, stripName(r.metric), frame.end, r.value[1]));
      });
      body.append(h("tr", { data: { instance } }, h("td", {}, instance), ...cells));
    }
    if (!rows.size) body.append(h("tr", {}, h("td", { colspan: "6", class: "dim" }, "no worker is scraped")));
  }

  function renderTiles(frame) {
    const tiles = document.getElementById("tiles");
    tiles.replaceChildren();
    const instant = (id, title) => {
      const q = query(id);
      const result = (frame.results[id] || [])[0];
      const value = result ? num(q, stripName(result.metric), frame.end, result.value[1]) : h("span", { class: "dim" }, "–");
      return h("div", { class: "tile", data: { tile: id } }, h("div", { class: "label", title: `${title || q.name}\n\n${q.expr}` }, title || q.name),
               h("div", { class: "value" }, value));
    };
    const champion = D.quality && D.quality.currentChampion;
    tiles.append(
      instant("throughput", "throughput"),
      instant("processed", "processed"),
      h("div", { class: "tile", data: { tile: "champion" } }, h("div", { class: "label" }, "champion"),
        h("div", { class: "value", style: champion ? `color:${modelColor(champion)}` : "" }, champion || "–")),
      instant("champion_metric", query("champion_metric").name.replace("_", " ")),
      instant("drift_count", "drifts detected"),
      instant("p95", "p95 latency"),
      instant("total_lag", "consumer lag"),
      instant("workers_ready", "workers ready"),
    );
    const scraped = (frame.results.scraped || []).length;
    tiles.querySelector('[data-tile="workers_ready"] .value').append(h("small", {}, `of ${scraped}`));
  }

  function setHints() {
    for (const panel of D.spec.panels) {
      const box = document.getElementById("panel-" + panel.id) || (panel.id === "data_drift" ? document.getElementById("panel-drift") : null);
      if (!box) continue;
      const hint = box.querySelector(".hint");
      if (hint) hint.title = panel.description + "\n\nPromQL:\n" + panel.queries.map((q) => `${q.id}: ${q.expr}`).join("\n");
    }
    document.getElementById("quality-title").textContent = D.spec.panels.find((p) => p.id === "quality").title;
    document.getElementById("source").textContent = D.spec.prometheus;
  }

  // ---- the loop ---------------------------------------------------------------------------------------
  function setStatus(ok, text) {
    document.getElementById("status-dot").className = "dot " + (ok ? "ok" : "err");
    document.getElementById("status-text").textContent = text;
    const banner = document.getElementById("banner");
    banner.hidden = ok;
    if (!ok) banner.textContent = text;
  }

  async function refresh() {
    const began = performance.now();
    try {
      const frame = await readFrame();
      D.frame = frame;
      renderQuality(frame);
      renderTiles(frame);
      renderLines("events", ["events_rate"], frame, byOutcome);
      renderLines("latency", ["latency_p50", "latency_p95", "latency_p99"], frame, byIndex);
      renderLines("lag", ["lag"], frame, byIndex);
      renderLines("labels", ["labels_rate"], frame, byOutcome);
      renderLines("dead_letters", ["dead_letters_total"], frame, (s, i) => PALETTE[(i + 5) % PALETTE.length]);
      renderDrift(frame);
      renderWorkers(frame);
      D.frames += 1;
      document.body.dataset.frames = String(D.frames);
      document.body.dataset.end = String(frame.end);
      setStatus(true, `updated ${clock(frame.end)} · ${Math.round(performance.now() - began)} ms`);
    } catch (error) {
      D.errors += 1;
      setStatus(false, `cannot read Prometheus: ${error.message}`);
    }
  }

  function schedule() {
    clearTimeout(timer);
    if (paused) return;
    timer = setTimeout(async () => { await refresh(); schedule(); }, D.spec.refresh_s * 1000);
  }

  function setupControls() {
    const ranges = document.getElementById("ranges");
    for (const [label, seconds] of RANGES) {
      const button = h("button", { type: "button", class: seconds === range ? "on" : "", data: { seconds: String(seconds) } }, label);
      button.addEventListener("click", () => D.setRange(seconds));
      ranges.append(button);
    }
    /** Show the last ``seconds`` from now on (the range buttons; also ``?range=90s`` in the URL). */
    D.setRange = async (seconds) => {
      range = seconds;
      ranges.querySelectorAll("button").forEach((b) => b.classList.toggle("on", Number(b.dataset.seconds) === seconds));
      await refresh();
      schedule();
    };
    const pause = document.getElementById("pause");
    pause.addEventListener("click", () => {
      paused = !paused;
      pause.textContent = paused ? "resume" : "pause";
      schedule();
    });
    const theme = document.getElementById("theme");
    const label = () => { theme.textContent = document.documentElement.dataset.theme === "dark" ? "light" : "dark"; };
    label();
    theme.addEventListener("click", () => {
      const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
      document.documentElement.dataset.theme = next;
      try { localStorage.setItem("streamlearn-theme", next); } catch (e) { /* private mode */ }
      label();
      refresh();
    });
    let resizing = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizing);
      resizing = setTimeout(() => {
        for (const [id, plot] of Object.entries(D.plots)) {
          const box = document.getElementById("chart-" + id);
          plot.setSize({ width: box.clientWidth, height: box.clientHeight });
        }
      }, 100);
    });
  }

  async function start() {
    try {
      const response = await fetch("/api/queries");
      const spec = await response.json();
      spec.queries = spec.panels.flatMap((p) => p.queries);
      D.spec = spec;
    } catch (error) {
      setStatus(false, `cannot load the query catalogue: ${error.message}`);
      setTimeout(start, 3000);
      return;
    }
    setHints();
    setupControls();
    await refresh();
    schedule();
  }
  start();
})();
