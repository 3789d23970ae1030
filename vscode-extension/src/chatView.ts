// The chat panel: a webview view in reinf's activity-bar container. It sends the conversation to
// `reinf/chat`, streams the answer from `$/progress`, and passes ratings to `reinf/rate`.
import { randomUUID } from 'crypto';
import * as path from 'path';
import * as vscode from 'vscode';
import type { Daemon } from './connection';
import { errorText, untilMessage } from './format';
import { renderMarkdown } from './markdown';
import type { FromChat, SentContext, ToChat } from './messages';
import type { ChatContext, ChatDelta, ChatMessage, ChatResult, RateResult, StatusResult } from './protocol';
import { submitRating } from './ratings';
import { fillWebview } from './webviewShell';

/** Redraw a streaming answer at most this often. */
const DRAW_INTERVAL_MS = 50;
/** Where the current thread is kept, so that it survives a window reload. */
const THREAD_KEY = 'reinf.chat.thread';
/** The most turns kept, and the most characters of sent context kept with each. */
const KEPT_TURNS = 50;
const KEPT_CONTEXT_CHARS = 20_000;

/** A finished turn as the workspace keeps it: Markdown, not HTML, so a newer renderer redraws it. */
interface KeptTurn {
  turn: number;
  content: string;
  context?: SentContext;
  answer: string;
  interactionId: string;
  meta: string;
  error?: string;
}

export class ChatView implements vscode.WebviewViewProvider {
  static readonly viewId = 'reinf.chat';
  private view: vscode.WebviewView | undefined;
  /** The thread so far: the daemon stores each turn but does not keep threads. */
  private thread: KeptTurn[];
  private turn: number;
  private running: vscode.CancellationTokenSource | undefined;
  private readonly focus = new vscode.EventEmitter<boolean>();
  /** The panel took (true) or gave back (false) the keyboard focus. */
  readonly onDidChangeFocus = this.focus.event;

  constructor(
    private readonly extensionUri: vscode.Uri,
    private readonly daemon: Daemon,
    private readonly rated: (r: RateResult) => void,
    private readonly memento: vscode.Memento,
  ) {
    this.thread = memento.get<KeptTurn[]>(THREAD_KEY, []);
    this.turn = this.thread.reduce((n, t) => Math.max(n, t.turn), 0);
  }

  /** The conversation the model sees: each answered question and its answer. */
  private messages(): ChatMessage[] {
    return this.thread
      .filter((t) => !t.error)
      .flatMap((t): ChatMessage[] => [
        { role: 'user', content: t.content },
        { role: 'assistant', content: t.answer },
      ]);
  }

  private keep(t: KeptTurn): void {
    const context = t.context && { ...t.context, text: t.context.text.slice(0, KEPT_CONTEXT_CHARS) };
    this.thread = [...this.thread, { ...t, context }].slice(-KEPT_TURNS);
    void this.memento.update(THREAD_KEY, this.thread);
  }

  resolveWebviewView(view: vscode.WebviewView): void {
    this.view = view;
    fillWebview(view.webview, this.extensionUri, { title: 'reinf chat', script: 'chat.js', body: CHAT_BODY });
    view.webview.onDidReceiveMessage((m: FromChat) => this.onMessage(m));
  }

  /** The daemon's count of ratings to go changed: say it under the newest rating. */
  statusChanged(s: StatusResult): void {
    this.post({ type: 'until', text: untilMessage(s) });
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
        this.post({
          type: 'restore',
          turns: this.thread.map((t) => ({ ...t, html: answerHtml(t.answer) })),
        });
        this.setConnection(this.daemon.current.kind === 'connected', this.daemon.current.message);
        return;
      case 'ask':
        return this.ask(m.text, m.include);
      case 'stop':
        this.running?.cancel();
        return;
      case 'newChat':
        this.running?.cancel();
        this.thread = [];
        void this.memento.update(THREAD_KEY, []);
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
    const messages: ChatMessage[] = [...this.messages(), { role: 'user', content: text }];
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
      const meta = answerMeta(r);
      // A stopped answer comes back too, as far as it got (finish reason "cancelled"), and can be rated.
      this.keep({ turn, content: text, context: sent, answer: r.text, interactionId: r.interaction_id, meta });
      this.post({ type: 'done', turn, html: answerHtml(r.text), interactionId: r.interaction_id, meta });
    } catch (e) {
      const message = cts.token.isCancellationRequested ? 'Stopped.' : errorText(e);
      this.keep({ turn, content: text, context: sent, answer: '', interactionId: '', meta: '', error: message });
      this.post({ type: 'error', turn, message });
    } finally {
      progress?.dispose();
      cts.dispose();
      this.running = undefined;
    }
  }
}

function answerHtml(text: string): string {
  return text.trim() ? renderMarkdown(text) : '<p class="muted">(The model answered with blank text.)</p>';
}

/** The line under an answer: model, adapter, how it ended, how long it took. */
function answerMeta(r: ChatResult): string {
  const total = r.timings?.total_ms != null ? ` · ${(r.timings.total_ms / 1000).toFixed(1)} s` : '';
  const adapter = r.adapter_version > 0 ? `adapter v${r.adapter_version}` : 'base model';
  const ended = { stop: '', length: 'cut at the token limit', cancelled: 'stopped' }[r.finish_reason] ?? r.finish_reason;
  return [path.basename(r.model), adapter, ended].filter(Boolean).join(' · ') + total;
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
