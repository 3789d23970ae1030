// reinf's JupyterLab extension, written by hand: no build step, no bundled packages. It is a module-federation
// container as JupyterLab loads one (window._JUPYTERLAB[name] with init and get), and it takes JupyterLab's
// own packages from the share scope JupyterLab hands to init, so the tokens are JupyterLab's.
// Two plugins: the /reinf/ page from the Help menu and the launcher; Copy and "Insert as a new cell" on the
// answers of %%ask (the outputs whose metadata has reinf.state "done" or "stopped").
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

  async function plugins() {
    const [mainmenu, launcher, notebook] = await Promise.all(
      ["@jupyterlab/mainmenu", "@jupyterlab/launcher", "@jupyterlab/notebook"].map((p) => shared(p).catch(() => null)),
    );
    const list = [pagePlugin(mainmenu, launcher)];
    if (notebook && notebook.INotebookTracker && notebook.NotebookActions) list.push(answerPlugin(notebook));
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
