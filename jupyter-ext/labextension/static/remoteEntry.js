// reinf's JupyterLab extension, written by hand: no build step, no bundled packages. It is a module-federation
// container as JupyterLab loads one (window._JUPYTERLAB[name] with init and get), and it takes JupyterLab's
// own packages from the share scope JupyterLab hands to init, so the tokens are JupyterLab's.
// Three plugins: the /reinf/ page from the Help menu and the launcher; Copy and "Insert as a new cell" on the
// answers of %%ask (the outputs whose metadata has reinf.state "done" or "stopped"); a chat panel in the right
// sidebar, a thin client of the same daemon through the server extension's /reinf/api/chat and /reinf/api/rate.
"use strict";

var _JUPYTERLAB = (window._JUPYTERLAB = window._JUPYTERLAB || {});

(() => {
  const NAME = "reinf-jupyterlab";
  const OPEN_PAGE = "reinf:open-page";
  let scope = null;

  function newest(versions) {
    const parts = (v) => v.split(/[.-]/).map((p) => parseInt(p, 10) || 0);
    return Object.keys(versions).sort((a, b) => {
      const x = parts(a), y = parts(b);
      for (let i = 0; i < Math.max(x.length, y.length); i++) if ((x[i] || 0) !== (y[i] || 0)) return (x[i] || 0) - (y[i] || 0);
      return 0;
    }).pop();
  }

  // One of JupyterLab's packages, the very instance the application uses; null when it is not shared.
  async function shared(pkg) {
    const versions = scope && scope[pkg];
    if (!versions || !Object.keys(versions).length) return null;
    const factory = await versions[newest(versions)].get();
    return factory();
  }

  function baseUrl() {
    const node = document.getElementById("jupyter-config-data");
    const base = node ? JSON.parse(node.textContent || "{}").baseUrl : "/";
    return (base || "/").replace(/\/?$/, "/");
  }

  function pagePlugin(mainmenu, launcher) {
    return {
      id: `${NAME}:page`,
      description: "Opens reinf's review queue and dashboard from the Help menu and the launcher.",
      autoStart: true,
      optional: [mainmenu && mainmenu.IMainMenu, launcher && launcher.ILauncher].filter(Boolean),
      activate: (app, ...tokens) => {
        const menu = tokens.find((t) => t && t.helpMenu);
        const launch = tokens.find((t) => t && typeof t.add === "function" && !t.helpMenu);
        app.commands.addCommand(OPEN_PAGE, {
          label: "reinf: Review Queue and Dashboard",
          caption: "Rate answers, follow training runs, switch adapter versions",
          execute: () => window.open(`${baseUrl()}reinf/`, "_blank", "noopener"),
        });
        if (menu) menu.helpMenu.addGroup([{ command: OPEN_PAGE }], 30);
        if (launch) launch.add({ command: OPEN_PAGE, category: "Other", rank: 50 });
      },
    };
  }

  const STYLE = `
.reinf-answer-actions { display: flex; gap: 4px; justify-content: flex-end; margin: 2px 0; }
.reinf-answer-actions button { font-size: var(--jp-ui-font-size0); padding: 1px 8px; cursor: pointer;
  color: var(--jp-ui-font-color1); background: var(--jp-layout-color2); border: 1px solid var(--jp-border-color1);
  border-radius: 3px; }
.reinf-answer-actions button:hover { background: var(--jp-layout-color3); }
.reinf-answer-actions .reinf-said { color: var(--jp-ui-font-color2); font-size: var(--jp-ui-font-size0); align-self: center; }
`;

  function button(label, title, onClick) {
    const b = document.createElement("button");
    b.type = "button";
    b.textContent = label;
    b.title = title;
    b.addEventListener("click", onClick);
    return b;
  }

  // Copy and Insert for one piece of text; `where` is the cell the answer is in.
  function actions(text, notebookPkg, panel, cell) {
    const row = document.createElement("div");
    row.className = "reinf-answer-actions";
    const said = document.createElement("span");
    said.className = "reinf-said";
    said.setAttribute("role", "status");
    const copy = button("Copy", "Copy to the clipboard", async () => {
      try {
        await navigator.clipboard.writeText(text);
        said.textContent = "Copied.";
      } catch (error) {
        said.textContent = `Cannot copy: ${error.message}`;
      }
    });
    const insert = button("Insert as a new cell", "Insert below this cell as a code cell", () => {
      const notebook = panel.content;
      const index = notebook.widgets.indexOf(cell);
      if (index < 0) return;
      notebook.activeCellIndex = index;
      notebookPkg.NotebookActions.insertBelow(notebook);
      if (notebook.activeCell.model.type !== "code") notebookPkg.NotebookActions.changeCellType(notebook, "code");
      notebook.activeCell.model.sharedModel.setSource(text);
      said.textContent = "Inserted below.";
    });
    row.append(said, copy, insert);
    return row;
  }

  function decorate(panel, cell, notebookPkg) {
    const area = cell.outputArea;
    if (!area || !area.model) return;
    for (let i = 0; i < area.model.length; i++) {
      const output = area.model.get(i);
      const meta = output.metadata && output.metadata.reinf;
      const child = area.widgets[i];
      if (!meta || !child || !["done", "stopped"].includes(meta.state)) continue;
      const node = child.node;
      const rendered = node.querySelector(".jp-RenderedMarkdown, .jp-RenderedText");
      if (!rendered || node.dataset.reinfDecorated === meta.interaction_id) continue;
      node.querySelectorAll(".reinf-answer-actions").forEach((n) => n.remove());
      node.dataset.reinfDecorated = meta.interaction_id;
      // Code blocks get their own buttons; an answer without any gets one pair for all of it.
      const blocks = Array.from(rendered.querySelectorAll("pre"));
      for (const pre of blocks) pre.before(actions(pre.textContent.replace(/\n$/, ""), notebookPkg, panel, cell));
      if (!blocks.length) {
        const data = output.data || {};
        const text = String(data["text/plain"] || rendered.textContent || "").replace(/\n\n\(stopped\)$/, "");
        rendered.append(actions(text, notebookPkg, panel, cell));
      }
    }
  }

  function answerPlugin(notebookPkg) {
    return {
      id: `${NAME}:answer-actions`,
      description: "Copy and Insert as a new cell on %%ask answers.",
      autoStart: true,
      requires: [notebookPkg.INotebookTracker],
      activate: (app, tracker) => {
        const style = document.createElement("style");
        style.textContent = STYLE;
        document.head.append(style);
        const watch = (panel) => {
          let pending = 0;
          const scan = () => {
            pending = 0;
            for (const cell of panel.content.widgets) decorate(panel, cell, notebookPkg);
          };
          // Outputs render asynchronously; look again once the notebook's DOM settles.
          const observer = new MutationObserver(() => {
            if (!pending) pending = window.setTimeout(scan, 150);
          });
          observer.observe(panel.node, { childList: true, subtree: true });
          panel.disposed.connect(() => observer.disconnect());
          scan();
        };
        tracker.forEach(watch);
        tracker.widgetAdded.connect((_, panel) => watch(panel));
      },
    };
  }

  const CHAT_STYLE = `
.reinf-chat { display: flex; flex-direction: column; height: 100%; padding: 6px; box-sizing: border-box;
  background: var(--jp-layout-color1); color: var(--jp-ui-font-color1); font-size: var(--jp-ui-font-size1); }
.reinf-chat-log { flex: 1 1 auto; min-height: 0; overflow-y: auto; }
.reinf-chat-turn { border-bottom: 1px solid var(--jp-border-color2); padding: 4px 0; }
.reinf-chat-who { font-weight: 600; margin-top: 4px; }
.reinf-chat-question { white-space: pre-wrap; }
.reinf-chat-meta, .reinf-chat-said { color: var(--jp-ui-font-color2); font-size: var(--jp-ui-font-size0); }
.reinf-chat-error { color: var(--jp-error-color1); }
.reinf-chat-rate button { background: transparent; border: 1px solid transparent; cursor: pointer; font-size: 1.1em;
  color: var(--jp-ui-font-color1); padding: 0 3px; }
.reinf-chat-rate button[aria-pressed="true"], .reinf-chat-rate button.on { color: var(--jp-warn-color1); }
.reinf-chat-ask { flex: none; display: flex; flex-direction: column; gap: 4px; padding-top: 6px;
  border-top: 1px solid var(--jp-border-color2); }
.reinf-chat-ask textarea { width: 100%; box-sizing: border-box; resize: vertical; font: inherit;
  background: var(--jp-input-background); color: var(--jp-ui-font-color1); border: 1px solid var(--jp-border-color1); }
.reinf-chat-ask .row { display: flex; gap: 4px; justify-content: flex-end; }
`;

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function chatPlugin(widgets, services, rendermimePkg) {
    return {
      id: `${NAME}:chat`,
      description: "A chat panel in the right sidebar, answered by the reinf daemon.",
      autoStart: true,
      optional: rendermimePkg ? [rendermimePkg.IRenderMimeRegistry] : [],
      activate: (app, rendermime) => {
        const settings = services.ServerConnection.makeSettings();
        const call = async (path, body) => {
          const url = `${settings.baseUrl.replace(/\/?$/, "/")}reinf/api/${path}`;
          const reply = await services.ServerConnection.makeRequest(url, { method: "POST", body: JSON.stringify(body) }, settings);
          const data = await reply.json().catch(() => null);
          if (!reply.ok) throw new Error((data && data.message) || `${reply.status} ${reply.statusText}`);
          return data;
        };
        const panel = new widgets.Widget();
        panel.id = "reinf-chat";
        panel.title.label = "reinf";
        panel.title.caption = "reinf chat: answers from your local model, rated by you";
        panel.addClass("reinf-chat");
        const style = document.createElement("style");
        style.textContent = CHAT_STYLE;
        document.head.append(style);
        const log = el("div", { class: "reinf-chat-log", "aria-live": "polite" });
        log.append(el("p", { class: "reinf-chat-meta" }, "Ask about your code. Rate the answers: reinf learns from your ratings."));
        const form = el("div", { class: "reinf-chat-ask" });
        const prompt = el("textarea", { rows: "3", placeholder: "Ask reinf… (Ctrl+Enter to send)", "aria-label": "Question" });
        const row = el("div", { class: "row" });
        const clear = el("button", { type: "button", class: "jp-Button jp-mod-styled" }, "New");
        const send = el("button", { type: "button", class: "jp-Button jp-mod-styled jp-mod-accept" }, "Ask");
        row.append(clear, send);
        form.append(prompt, row);
        panel.node.append(log, form);
        let messages = [];

        const rating = (interactionId) => {
          const rate = { interaction_id: interactionId };
          const box = el("div", { class: "reinf-chat-rate", "data-interaction": interactionId });
          const said = el("div", { class: "reinf-chat-said", role: "status" });
          const save = async () => {
            try {
              const r = await call("rate", { ...rate });
              const what = [rate.thumbs ? `thumbs ${rate.thumbs}` : "", rate.stars ? `${rate.stars} star${rate.stars > 1 ? "s" : ""}` : ""]
                .filter(Boolean).join(" and ");
              const n = r.until_next_training;
              said.textContent = `Saved: ${what}. ${n > 0 ? `${n} more rating${n === 1 ? "" : "s"} until the next training.` : "Training starts now."}`;
            } catch (error) {
              said.textContent = `Not saved: ${error.message}`;
            }
          };
          const thumbs = ["up", "down"].map((t) => {
            const b = el("button", { type: "button", class: `thumb-${t}`, "aria-pressed": "false", title: `Thumbs ${t}` }, t === "up" ? "▲ good" : "▼ bad");
            b.addEventListener("click", () => {
              rate.thumbs = t;
              thumbs.forEach((o) => o.setAttribute("aria-pressed", String(o === b)));
              save();
            });
            return b;
          });
          const stars = [1, 2, 3, 4, 5].map((n) => {
            const b = el("button", { type: "button", class: "star", "data-stars": String(n), title: `${n} star${n > 1 ? "s" : ""}` }, "☆");
            b.addEventListener("click", () => {
              rate.stars = n;
              stars.forEach((o, i) => { o.textContent = i < n ? "★" : "☆"; o.classList.toggle("on", i < n); });
              save();
            });
            return b;
          });
          box.append(...thumbs, ...stars, said);
          return box;
        };

        const ask = async () => {
          const text = prompt.value.trim();
          if (!text || send.disabled) return;
          prompt.value = "";
          send.disabled = true;
          log.querySelector(".reinf-chat-meta:only-child")?.remove();
          const turn = el("div", { class: "reinf-chat-turn" });
          turn.append(el("div", { class: "reinf-chat-who" }, "You"), el("div", { class: "reinf-chat-question" }, text),
            el("div", { class: "reinf-chat-who" }, "reinf"));
          const answer = el("div", { class: "reinf-chat-answer" }, "…");
          turn.append(answer);
          log.append(turn);
          turn.scrollIntoView({ block: "end" });
          const asked = [...messages, { role: "user", content: text }];
          try {
            const r = await call("chat", { messages: asked });
            messages = [...asked, { role: "assistant", content: r.text }];
            answer.textContent = "";
            answer.setAttribute("data-interaction", r.interaction_id);
            if (rendermime && r.text.trim()) {
              const renderer = rendermime.createRenderer("text/markdown");
              await renderer.renderModel(rendermime.createModel({ data: { "text/markdown": r.text }, trusted: false }));
              // Markdown that renders to nothing visible (an HTML tag the sanitizer drops, say) is shown as text.
              const visible = renderer.node.textContent.trim() || renderer.node.querySelector("img, hr, table");
              answer.append(visible ? renderer.node : el("div", { class: "reinf-chat-question" }, r.text));
            } else {
              answer.append(el("div", { class: "reinf-chat-question" }, r.text.trim() ? r.text : "(The model answered with blank text.)"));
            }
            const adapter = r.adapter_version > 0 ? `adapter v${r.adapter_version}` : "base model";
            turn.append(el("div", { class: "reinf-chat-meta" }, `${r.model.split("/").pop()} · ${adapter}`), rating(r.interaction_id));
          } catch (error) {
            answer.textContent = "";
            answer.append(el("div", { class: "reinf-chat-error", role: "alert" }, `No answer: ${error.message}`));
          } finally {
            send.disabled = false;
            turn.scrollIntoView({ block: "end" });
          }
        };
        send.addEventListener("click", ask);
        prompt.addEventListener("keydown", (e) => {
          if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) {
            e.preventDefault();
            ask();
          }
        });
        clear.addEventListener("click", () => {
          messages = [];
          log.replaceChildren(el("p", { class: "reinf-chat-meta" }, "New conversation."));
        });
        app.shell.add(panel, "right", { rank: 900 });
      },
    };
  }

  async function plugins() {
    const [mainmenu, launcher, notebook, widgets, services, rendermime] = await Promise.all(
      ["@jupyterlab/mainmenu", "@jupyterlab/launcher", "@jupyterlab/notebook", "@lumino/widgets", "@jupyterlab/services",
        "@jupyterlab/rendermime"].map((p) => shared(p).catch(() => null)),
    );
    const list = [pagePlugin(mainmenu, launcher)];
    if (notebook && notebook.INotebookTracker && notebook.NotebookActions) list.push(answerPlugin(notebook));
    if (widgets && widgets.Widget && services && services.ServerConnection) list.push(chatPlugin(widgets, services, rendermime));
    return list;
  }

  _JUPYTERLAB[NAME] = {
    init: (shareScope) => {
      scope = shareScope;
    },
    get: async (module) => {
      if (module !== "./extension") throw new Error(`Module "${module}" does not exist in ${NAME}.`);
      const list = await plugins();
      return () => ({ __esModule: true, default: list });
    },
  };
})();
