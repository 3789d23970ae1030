// The chat panel: a webview view in reinf's activity-bar container. It sends the conversation to
// `reinf/chat`, streams the answer from `$/progress`, and passes ratings to `reinf/rate`.
import { randomUUID } from 'crypto';
import * as path from 'path';
import * as vscode from 'vscode';
import type { Daemon } from './connection';
import { errorText } from './format';
import { renderMarkdown } from './markdown';
import type { FromChat, SentContext, ToChat } from './messages';
import type { ChatContext, ChatDelta, ChatMessage, ChatResult, RateResult } from './protocol';
import { submitRating } from './ratings';
import { fillWebview } from './webviewShell';

/** Redraw a streaming answer at most this often. */
const DRAW_INTERVAL_MS = 50;

export class ChatView implements vscode.WebviewViewProvider {
  static readonly viewId = 'reinf.chat';
  private view: vscode.WebviewView | undefined;
  /** The conversation so far: the daemon stores each turn but does not keep threads. */
  private messages: ChatMessage[] = [];
  private turn = 0;
  private running: vscode.CancellationTokenSource | undefined;
  private readonly focus = new vscode.EventEmitter<boolean>();
  /** The panel took (true) or gave back (false) the keyboard focus. */
  readonly onDidChangeFocus = this.focus.event;

  constructor(
    private readonly extensionUri: vscode.Uri,
    private readonly daemon: Daemon,
    private readonly rated: (r: RateResult) => void,
  ) {}

  resolveWebviewView(view: vscode.WebviewView): void {
    this.view = view;
    fillWebview(view.webview, this.extensionUri, { title: 'reinf chat', script: 'chat.js', body: CHAT_BODY });
    view.webview.onDidReceiveMessage((m: FromChat) => this.onMessage(m));
  }

  /** Tell the panel whether the daemon is there, so it can say so instead of failing on send. */
  setConnection(connected: boolean, text: string): void {
    this.post({ type: 'connection', connected, text });
  }

  private post(m: ToChat): void {
    void this.view?.webview.postMessage(m);
  }

  private async onMessage(m: FromChat): Promise<void> {
    switch (m.type) {
      case 'ready':
        this.setConnection(this.daemon.current.kind === 'connected', this.daemon.current.message);
        return;
      case 'ask':
        return this.ask(m.text, m.include);
      case 'stop':
        this.running?.cancel();
        return;
      case 'newChat':
        this.running?.cancel();
        this.messages = [];
        this.post({ type: 'cleared' });
        return;
      case 'rate':
        return this.post(await submitRating(this.daemon, m.rating, this.rated));
      case 'copy':
        await vscode.env.clipboard.writeText(m.code);
        void vscode.window.setStatusBarMessage('reinf: code copied', 2000);
        return;
      case 'insert':
        return insertCode(m.code);
      case 'focus':
        this.focus.fire(m.focused);
        return;
    }
  }

  private async ask(text: string, include: 'none' | 'selection' | 'file'): Promise<void> {
    if (this.running || !text.trim()) {
      return;
    }
    const turn = ++this.turn;
    const { context, sent } = gatherContext(include);
    this.post({ type: 'user', turn, content: text, context: sent });
    const messages: ChatMessage[] = [...this.messages, { role: 'user', content: text }];
    const cts = (this.running = new vscode.CancellationTokenSource());
    const token = randomUUID();
    let answer = '';
    let drawn = 0;
    let progress: vscode.Disposable | undefined;
    try {
      progress = this.daemon.onProgress<ChatDelta>(token, (v) => {
        answer += v.delta ?? '';
        if (Date.now() - drawn >= DRAW_INTERVAL_MS) {
          drawn = Date.now();
          this.post({ type: 'delta', turn, html: renderMarkdown(answer) });
        }
      });
      const maxTokens = vscode.workspace.getConfiguration('reinf').get<number>('chat.maxTokens', 512);
      const r = await this.daemon.request<ChatResult>(
        'reinf/chat',
        { messages, kind: 'chat', context, max_tokens: maxTokens, partialResultToken: token },
        cts.token,
      );
      this.messages = [...messages, { role: 'assistant', content: r.text }];
      const total = r.timings?.total_ms != null ? ` · ${Math.round(r.timings.total_ms)} ms` : '';
      const adapter = r.adapter_version > 0 ? `adapter v${r.adapter_version}` : 'base';
      this.post({
        type: 'done',
        turn,
        html: r.text.trim() ? renderMarkdown(r.text) : '<p class="muted">(The model answered with blank text.)</p>',
        interactionId: r.interaction_id,
        meta: `${path.basename(r.model)} · ${adapter} · ${r.finish_reason}${total}`,
      });
    } catch (e) {
      this.post({ type: 'error', turn, message: cts.token.isCancellationRequested ? 'Stopped.' : errorText(e) });
    } finally {
      progress?.dispose();
      cts.dispose();
      this.running = undefined;
    }
  }
}

/** The selection or the whole current file, as the daemon's `context`, and as the panel shows it. */
function gatherContext(include: 'none' | 'selection' | 'file'): { context?: ChatContext; sent?: SentContext } {
  if (include === 'none') {
    return {};
  }
  const editor = vscode.window.activeTextEditor;
  if (!editor) {
    return { sent: { label: 'No editor is open: nothing was sent as context', text: '' } };
  }
  const doc = editor.document;
  const name = path.basename(doc.uri.path);
  const base = { uri: doc.uri.toString(), language: doc.languageId };
  if (include === 'selection') {
    if (editor.selection.isEmpty) {
      return { sent: { label: 'Nothing is selected: nothing was sent as context', text: '' } };
    }
    const selection = doc.getText(editor.selection);
    const { start, end } = editor.selection;
    return {
      context: { ...base, selection },
      sent: { label: `Selection: ${name}, lines ${start.line + 1}–${end.line + 1}`, text: selection },
    };
  }
  const text = doc.getText();
  return { context: { ...base, file: text }, sent: { label: `File: ${name} (${doc.lineCount} lines)`, text } };
}

async function insertCode(code: string): Promise<void> {
  const editor = vscode.window.activeTextEditor ?? vscode.window.visibleTextEditors[0];
  if (!editor) {
    void vscode.window.showWarningMessage('reinf: open an editor to insert the code into.');
    return;
  }
  await editor.edit((b) => editor.selections.forEach((s) => b.replace(s, code)));
  await vscode.window.showTextDocument(editor.document, editor.viewColumn);
}

const CHAT_BODY = `
<main class="chat">
  <div id="connection" class="connection" role="status"></div>
  <div id="log" class="log" aria-live="polite">
    <p class="empty">Ask about your code. Rate the answers: reinf learns from your ratings.</p>
  </div>
  <form id="ask-form" class="ask">
    <textarea id="prompt" rows="3" placeholder="Ask reinf… (Ctrl+Enter to send)" aria-label="Question"></textarea>
    <div class="row">
      <label>Context <select id="include" aria-label="Context to send">
        <option value="none">None</option>
        <option value="selection">Selection</option>
        <option value="file">Current file</option>
      </select></label>
      <span class="grow"></span>
      <button id="new" type="button" class="secondary" title="Start a new conversation">New</button>
      <button id="stop" type="button" class="secondary" hidden>Stop</button>
      <button id="send" type="submit">Ask</button>
    </div>
  </form>
</main>`;
