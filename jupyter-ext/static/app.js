// reinf's review queue and dashboard. Plain JS and SVG: no framework, no remote content; text goes in as text.
"use strict";

(() => {
  const XSRF = document.querySelector('meta[name="reinf-xsrf"]').content;
  const SVG = "http://www.w3.org/2000/svg";
  const QUEUE_PAGE = 20;
  // Where a run's metrics (training/run.py, training/gate.py) keep what the dashboard plots.
  const RM_CORRELATION = "reward_model.correlation";
  const RM_ACCURACY = "reward_model.pairwise_accuracy";
  const CANDIDATE_REWARD = "gate.candidate_score";
  const ACTIVE_REWARD = "gate.active_score";
  const RM_WATERMARK = "reward_model.watermark";
  // The trainer's phases, in the words a user reads.
  const PHASES = { snapshot: "preparing", load: "loading the model", reward_model: "judging your ratings",
    ppo: "training", eval: "checking", save: "saving" };

  async function api(path, body) {
    const init = { credentials: "same-origin", headers: { Accept: "application/json" } };
    if (body !== undefined) {
      init.method = "POST";
      init.headers["Content-Type"] = "application/json";
      init.headers["X-XSRFToken"] = XSRF;
      init.body = JSON.stringify(body);
    }
    const response = await fetch("api/" + path, init);
    let data = null;
    try { data = await response.json(); } catch (_) { data = null; }
    if (!response.ok) throw new Error((data && data.message) || `${response.status} ${response.statusText}`);
    return data;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (key === "class") node.className = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value);
    }
    for (const child of children.flat()) {
      if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
    for (const child of children) node.append(child);
    return node;
  }

  function show(node, message, ok) {
    node.textContent = message;
    node.classList.toggle("ok", ok === true);
    node.classList.toggle("error", ok === false);
  }

  function when(ts) {
    if (!ts) return "";
    const date = new Date(ts);
    return isNaN(date) ? String(ts) : date.toLocaleString();
  }

  function metric(metrics, path) {
    let value = metrics;
    for (const part of path.split(".")) value = value && typeof value === "object" ? value[part] : undefined;
    return typeof value === "number" && isFinite(value) ? value : null;
  }

  function adapterName(version) {
    return version ? `adapter v${version}` : "the base model (v0)";
  }

  // ---- header: the active model and training -------------------------------------------------------

  async function loadStatus() {
    const model = document.getElementById("model");
    const training = document.getElementById("training");
    try {
      const status = await api("status");
      model.textContent = `Active model: ${status.model} on ${status.device}, ${adapterName(status.adapter_version)}. ` +
        `${status.ratings_total} ratings; ${status.until_next_training} more until the next training run.`;
      const t = status.training || {};
      let text = `Training: ${t.state || "idle"}`;
      if (t.run_id) text += ` (run ${t.run_id}${t.phase ? ", " + (PHASES[t.phase] || "training") : ""}` +
        `${typeof t.progress === "number" ? ", " + Math.round(t.progress * 100) + "%" : ""}` +
        `${typeof t.eta_s === "number" ? ", about " + Math.max(1, Math.round(t.eta_s / 60)) + " min left" : ""})`;
      if (status.last_run) text += `. Last run: ${status.last_run.run_id} ${status.last_run.state}`;
      training.textContent = text + ".";
      const acceptance = document.getElementById("acceptance");
      if (acceptance) acceptance.textContent = status.acceptance ? acceptanceText(status.acceptance) : "";
      model.classList.remove("error");
    } catch (error) {
      show(model, `Cannot reach the reinf daemon: ${error.message}`, false);
    }
  }

  // How often shown inline completions were accepted: this week, since the active adapter went live, the base's.
  function acceptanceText(a) {
    const rate = (b) => (b.shown ? `${Math.round(b.rate * 100)}% of ${b.shown}` : "none shown");
    const week = `Completions accepted: ${rate(a.last_7_days)} in the last 7 days`;
    return a.active.adapter_version
      ? `${week}; since adapter v${a.active.adapter_version}: ${rate(a.active)}; base: ${rate(a.base)}.`
      : `${week}; base (active): ${rate(a.base)}.`;
  }

  async function action(path, body, done) {
    const status = document.getElementById("action-status");
    show(status, "Working…");
    try {
      const result = await api(path, body);
      show(status, done(result), true);
    } catch (error) {
      show(status, error.message, false);
    }
    loadStatus();
    loadDashboard();
  }

  // ---- review queue -------------------------------------------------------------------------------

  let queueShown = 0;

  function ratingCard(item) {
    let stars = 0;
    let thumbs = null;
    const status = el("span", { class: "status", role: "status" });
    const starButtons = [1, 2, 3, 4, 5].map((n) => el("button", {
      type: "button", class: "star", "data-stars": n, "aria-label": `${n} star${n > 1 ? "s" : ""}`,
      onclick: () => { stars = n; paint(); },
    }, "☆"));
    const up = el("button", { type: "button", class: "thumb up", "aria-label": "thumbs up",
      onclick: () => { thumbs = thumbs === "up" ? null : "up"; paint(); } }, "▲ good");
    const down = el("button", { type: "button", class: "thumb down", "aria-label": "thumbs down",
      onclick: () => { thumbs = thumbs === "down" ? null : "down"; paint(); } }, "▼ bad");
    const comment = el("textarea", { class: "comment", rows: 2, placeholder: "Comment (optional)" });
    const submit = el("button", { type: "button", class: "submit" }, "Submit rating");
    function paint() {
      starButtons.forEach((button, i) => {
        button.textContent = i < stars ? "★" : "☆";
        button.classList.toggle("on", i < stars);
      });
      up.classList.toggle("on", thumbs === "up");
      down.classList.toggle("on", thumbs === "down");
    }
    const card = el("article", { class: "item", "data-interaction-id": item.interaction_id },
      el("p", { class: "muted" }, `${item.kind} · ${when(item.ts)} · ${item.interaction_id}`),
      el("h4", {}, "Prompt"), el("pre", { class: "prompt" }, item.prompt || ""),
      el("h4", {}, "Answer"), el("pre", { class: "response" }, item.response || ""),
      el("div", { class: "rate" }, up, down, el("span", { class: "stars" }, starButtons)),
      comment,
      el("div", {}, submit, status));
    submit.addEventListener("click", async () => {
      const body = { interaction_id: item.interaction_id };
      if (stars) body.stars = stars;
      if (thumbs) body.thumbs = thumbs;
      if (comment.value.trim()) body.comment = comment.value.trim();
      if (Object.keys(body).length === 1) {
        show(status, "Pick stars or thumbs, or write a comment, then submit.", false);
        return;
      }
      submit.disabled = true;
      show(status, "Saving…");
      try {
        const result = await api("rate", body);
        show(status, `Rating stored (${result.ratings_total} in total; ` +
          `${result.until_next_training} more until the next training run).`, true);
        card.classList.add("rated");
        submit.textContent = "Update rating";
        loadStatus();
      } catch (error) {
        show(status, `The rating was not stored: ${error.message}`, false);
      } finally {
        submit.disabled = false;
      }
    });
    return card;
  }

  async function loadQueue(more) {
    const list = document.getElementById("queue-items");
    const moreButton = document.getElementById("queue-more");
    if (!more) { list.replaceChildren(); queueShown = 0; }
    try {
      const page = await api(`queue?limit=${QUEUE_PAGE}&offset=${queueShown}`);
      if (!more && page.items.length === 0) list.append(el("p", { class: "muted" }, "Nothing to review: every answer is rated."));
      for (const item of page.items) list.append(ratingCard(item));
      queueShown += page.items.length;
      document.getElementById("queue-count").textContent = `(${page.total})`;
      moreButton.hidden = queueShown >= page.total;
    } catch (error) {
      list.append(el("p", { class: "error" }, `Cannot load the review queue: ${error.message}`));
    }
  }

  // ---- dashboard ----------------------------------------------------------------------------------

  // A small chart: bars and lines over categorical x labels. Each series has its own y range (left axis,
  // then right), unless `shared`: then all share the left one. A line series with `groups` (one key per
  // point) is drawn as one line per run of equal keys: points scored by different judges are not joined.
  // `label(v)` writes a value next to each bar or point.
  function chart(container, labels, series, empty, shared) {
    container.replaceChildren();
    if (series.every((s) => s.values.every((v) => v === null))) {
      container.append(el("p", { class: "muted" }, empty));
      return;
    }
    const W = 640, H = 240, L = 48, R = 48, T = 22, B = 40;
    const step = (W - L - R) / labels.length;
    const x = (i) => L + step * (i + 0.5);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "plot" });
    root.append(svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
    labels.forEach((label, i) => {
      if (labels.length <= 12 || i % Math.ceil(labels.length / 12) === 0) {
        root.append(svg("text", { x: x(i), y: H - B + 18, class: "tick", "text-anchor": "middle" }, label));
      }
    });
    const all = series.flatMap((s) => s.values.filter((v) => v !== null));
    series.forEach((s, k) => {
      const values = shared ? all : s.values.filter((v) => v !== null);
      if (s.values.every((v) => v === null)) return;
      const lo = s.min !== undefined ? s.min : Math.min(0, ...values);
      const hi = s.max !== undefined ? s.max : Math.max(...values, lo + 1e-9);
      const y = (v) => H - B - ((v - lo) / (hi - lo || 1)) * (H - T - B);
      if (k === 0 || (k === 1 && !shared)) {
        const axisX = k === 0 ? L - 6 : W - R + 6;
        const anchor = k === 0 ? "end" : "start";
        const cls = shared ? "tick" : `tick ${s.cls}`;
        root.append(svg("text", { x: axisX, y: y(hi) + 4, class: cls, "text-anchor": anchor }, String(+hi.toFixed(2))));
        root.append(svg("text", { x: axisX, y: y(lo), class: cls, "text-anchor": anchor }, String(+lo.toFixed(2))));
      }
      const note = (v, i, dy) => s.label &&
        root.append(svg("text", { x: x(i), y: y(v) + dy, class: `value ${s.cls}`, "text-anchor": "middle" }, s.label(v)));
      if (s.kind === "bar") {
        s.values.forEach((v, i) => {
          if (v === null) return;
          const width = Math.min(step * 0.7, 32);
          root.append(svg("rect", { x: x(i) - width / 2, width, y: y(v), height: H - B - y(v), class: s.cls },
            svg("title", {}, `${labels[i]}: ${s.name} ${v}`)));
          note(v, i, -5);
        });
      } else {
        const segments = [];
        s.values.forEach((v, i) => {
          if (v === null) return;
          const group = s.groups ? s.groups[i] : 0;
          const last = segments[segments.length - 1];
          if (last && last.group === group && last.end === i - 1) { last.points.push([x(i), y(v)]); last.end = i; }
          else segments.push({ group, points: [[x(i), y(v)]], end: i });
        });
        for (const seg of segments) {
          root.append(svg("polyline", { points: seg.points.map((p) => p.join(",")).join(" "), class: `line ${s.cls}` }));
        }
        s.values.forEach((v, i) => {
          if (v === null) return;
          root.append(svg("circle", { cx: x(i), cy: y(v), r: 4, class: s.cls }, svg("title", {}, `${labels[i]}: ${s.name} ${v}`)));
          note(v, i, k % 2 ? 16 : -9);
        });
      }
    });
    const legend = el("p", { class: "legend" }, series.map((s) => el("span", { class: s.cls }, `■ ${s.name}  `)));
    container.append(root, legend);
  }

  const number = (v, digits = 3) => (typeof v === "number" && isFinite(v) ? v.toFixed(digits) : "–");
  const pct = (v) => (typeof v === "number" && isFinite(v) ? `${(100 * v).toFixed(1)}%` : "–");

  // An adapter's evaluation as a few readable lines; every figure, raw, one click away.
  function evaluation(e) {
    if (!e || typeof e !== "object" || !Object.keys(e).length) return "";
    const against = e.compared_with ? `v${e.compared_with}` : "the base";
    const rows = [
      ["Judged", e.passed === false ? "did not pass" : "passed the checks"],
      ["Reward", `${number(e.candidate_score)} vs ${number(e.active_score)} for ${against}` +
        (typeof e.n_prompts === "number" ? ` (${e.n_prompts} held-out prompts)` : "")],
      ["Change", `KL ${number(e.kl_to_active, 2)} from ${against}` +
        (typeof e.max_kl === "number" ? ` (bound ${number(e.max_kl, 2)})` : "")],
      ["General text", `loss ${typeof e.general_loss_increase === "number" && e.general_loss_increase >= 0 ? "+" : ""}` +
        `${pct(e.general_loss_increase)}` +
        (typeof e.max_general_loss_increase === "number" ? ` (at most +${pct(e.max_general_loss_increase)})` : "")],
    ];
    if (typeof e.candidate_median_tokens === "number") {
      rows.push(["Answers", `median ${Math.round(e.candidate_median_tokens)} tokens`]);
    }
    const list = el("dl", { class: "eval-summary" }, rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
    const raw = { ...e };
    delete raw.example;  // chat-template text, not a figure
    return el("div", {}, list, (e.reasons || []).length ? el("p", { class: "error" }, e.reasons.join("; ")) : null,
      el("details", {}, el("summary", {}, "all figures"), el("pre", {}, JSON.stringify(raw, null, 1))));
  }

  async function loadDashboard() {
    const ratings = document.getElementById("ratings-chart");
    const runs = document.getElementById("runs-chart");
    const table = document.querySelector("#adapters tbody");
    const [timeline, runList, adapters] = await Promise.allSettled([api("timeline"), api("runs"), api("adapters")]);

    if (timeline.status === "fulfilled") {
      const points = timeline.value.points || [];
      chart(ratings, points.map((p) => String(p.day).slice(5, 10)), [
        { name: "ratings per day", kind: "bar", cls: "s1", values: points.map((p) => p.count), label: (v) => String(v) },
        { name: "mean stars (1–5)", kind: "line", cls: "s2", min: 1, max: 5, values: points.map((p) => p.mean_stars ?? null),
          label: (v) => `★${v.toFixed(1)}` },
      ], "No ratings yet.");
    } else show(ratings, `Cannot load the ratings: ${timeline.reason.message}`, false);

    if (runList.status === "fulfilled") {
      const list = (runList.value.runs || []).slice().reverse();
      const labels = list.map((r) => String(r.run_id));
      // A run's judge is the reward model it used, known by the ratings it was trained up to.
      const judges = list.map((r) => metric(r.metrics, RM_WATERMARK));
      const series = (name, cls, path, groups) => ({ name, kind: "line", cls, groups,
        values: list.map((r) => metric(r.metrics, path)), label: (v) => v.toFixed(2) });
      runs.replaceChildren();
      const rm = el("div", { class: "chart" });
      const reward = el("div", { class: "chart" });
      runs.append(el("h4", {}, "Reward model, on held-out ratings"), rm,
        el("h4", {}, "Held-out reward (reward-model score of sampled answers)"), reward);
      chart(rm, labels, [series("correlation", "s1", RM_CORRELATION), series("pairwise accuracy", "s2", RM_ACCURACY)],
        "No training runs yet.", true);
      chart(reward, labels, [series("candidate adapter", "s1", CANDIDATE_REWARD, judges),
        series("adapter it was compared with", "s2", ACTIVE_REWARD, judges)], "No training run got as far as the gate yet.", true);
      if (new Set(judges.filter((j) => j !== null)).size > 1) {
        reward.append(el("p", { class: "muted" }, "A new reward model judged the runs after each break in the lines; " +
          "scores from different judges are not comparable, so they are not joined."));
      }
      runs.append(el("ul", { class: "runs" }, list.slice().reverse().slice(0, 10).map((r) =>
        el("li", {}, `${r.run_id}: ${r.state} (${r.trigger}) ${when(r.started)}` +
          (r.adapter_version ? ` → adapter v${r.adapter_version}` : "") +
          (r.metrics && r.metrics.reasons && r.metrics.reasons.length ? ` — ${r.metrics.reasons.join("; ")}` : "")))));
    } else show(runs, `Cannot load the runs: ${runList.reason.message}`, false);

    table.replaceChildren();
    if (adapters.status === "fulfilled") {
      const active = adapters.value.active;
      const rows = (adapters.value.adapters || []).slice();
      rows.push({ version: 0, status: active ? "retired" : "active", run_id: "", created: "", eval: null });
      for (const a of rows) {
        const isActive = a.version === active || (!active && a.version === 0);
        const usable = a.status === "active" || a.status === "retired";  // not rejected, forgotten or a candidate
        const said = el("span", { class: "status", role: "status" });
        const verb = a.version === 0 ? "Use the base model" : a.version > active ? `Switch to v${a.version}` : `Roll back to v${a.version}`;
        const button = isActive || !usable ? el("span", { class: "muted" }, isActive ? "active" : "")
          : el("button", { type: "button", class: "rollback", "data-version": a.version,
            onclick: (event) => switchTo(a.version, event.target, said) }, verb);
        table.append(el("tr", { class: isActive ? "active" : "", "data-version": a.version },
          el("td", {}, a.version ? `v${a.version}` : "v0 (base)"), el("td", {}, isActive ? "active" : a.status),
          el("td", {}, a.run_id || ""), el("td", {}, when(a.created)),
          el("td", { class: "eval" }, evaluation(a.eval)), el("td", {}, button, said)));
      }
    } else {
      table.append(el("tr", {}, el("td", { colspan: 6, class: "error" }, `Cannot load the adapters: ${adapters.reason.message}`)));
    }
  }

  // Switching adapters: the answer is said in the row of the button, then the table redraws around it.
  async function switchTo(version, button, said) {
    button.disabled = true;
    show(said, "Switching…");
    try {
      const r = await api("rollback", { version });
      await Promise.all([loadStatus(), loadDashboard()]);
      const row = document.querySelector(`#adapters tr[data-version="${r.adapter_version}"] td:last-child`);
      if (row) row.append(el("span", { class: "status ok", role: "status" }, `Now using ${adapterName(r.adapter_version)}.`));
    } catch (error) {
      show(said, error.message, false);
      button.disabled = false;
    }
  }

  document.getElementById("retrain").addEventListener("click",
    () => action("retrain", {}, (r) => `Training run ${r.run_id} started.`));
  document.getElementById("cancel").addEventListener("click",
    () => action("cancel", {}, (r) => (r.cancelled ? "Training cancelled." : "No training run was in progress.")));
  document.getElementById("queue-more").addEventListener("click", () => loadQueue(true));

  loadStatus();
  loadQueue(false);
  loadDashboard();
  setInterval(loadStatus, 5000);
})();
