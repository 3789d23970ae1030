// Inline completions come from the language client's inline completion feature. This module adds what the
// daemon cannot see: the settings gate, the debounce, and the implicit feedback on what was shown.
import * as vscode from 'vscode';
import type { Middleware } from 'vscode-languageclient/node';
import type { Daemon } from './connection';
import { FeedbackTracker } from './feedback';
import { debounce, languageEnabled } from './gate';
import type { AcceptedArg } from './protocol';

export class InlineFeedback implements vscode.Disposable {
  private daemon: Daemon | undefined;
  private readonly tracker = new FeedbackTracker((p) => this.daemon?.notify('reinf/feedback', p));
  private readonly subscriptions: vscode.Disposable[] = [];

  readonly middleware: Middleware = {
    provideInlineCompletionItems: async (document, position, context, token, next) => {
      const cfg = vscode.workspace.getConfiguration('reinf', document);
      if (
        !cfg.get<boolean>('inlineCompletions.enabled', true) ||
        !languageEnabled(cfg.get<Record<string, unknown>>('inlineCompletions.languages'), document.languageId)
      ) {
        return null;
      }
      // VS Code cancels this token when a newer request supersedes it; the client then sends $/cancelRequest.
      if (!(await debounce(cfg.get<number>('inlineCompletions.debounceMs', 200), token))) {
        return null;
      }
      const result = await next(document, position, context, token);
      if (token.isCancellationRequested || !result) {
        return null;
      }
      const items = Array.isArray(result) ? result : result.items;
      // With the suggest widget open, VS Code draws an inline item only if it extends the selected entry. One
      // that does not would never be seen: show nothing rather than record it as shown.
      const drawn = items.filter((item) => extendsSelected(item, context.selectedCompletionInfo));
      if (drawn.length === 0) {
        return null;
      }
      this.noteShown(document, position, drawn[0]);
      return drawn;
    },
    // VS Code shows inline completions; the daemon's textDocument/completion fallback would only duplicate them.
    provideCompletionItem: () => undefined,
  };

  attach(daemon: Daemon): void {
    this.daemon = daemon;
    const now = () => Date.now();
    this.subscriptions.push(
      vscode.commands.registerCommand('reinf.accepted', (arg?: AcceptedArg) => {
        if (arg?.interaction_id) {
          this.tracker.accepted(arg.interaction_id, arg.text ?? '', now());
        }
      }),
      vscode.commands.registerCommand('reinf.dismissInline', async () => {
        this.tracker.dismissed(now());
        await vscode.commands.executeCommand('editor.action.inlineSuggest.hide');
      }),
      vscode.workspace.onDidChangeTextDocument((e) => {
        const edits = e.contentChanges.map((c) => ({ start: c.range.start, end: c.range.end, text: c.text }));
        this.tracker.edited(e.document.uri.toString(), edits, now());
      }),
      vscode.window.onDidChangeTextEditorSelection((e) => {
        if (isCode(e.textEditor.document)) {
          this.tracker.cursorMoved(e.textEditor.document.uri.toString(), e.selections[0].active, now());
        }
      }),
      vscode.window.onDidChangeActiveTextEditor(() => this.tracker.dismissed(now())),
      vscode.window.onDidChangeWindowState((s) => this.tracker.focusChanged(s.focused, now())),
    );
  }

  /** A panel of ours (the chat) took or gave back the focus: the editor's ghost text is not being looked at. */
  panelFocused(focused: boolean): void {
    this.tracker.focusChanged(!focused && vscode.window.state.focused, Date.now());
  }

  dispose(): void {
    this.subscriptions.forEach((d) => d.dispose());
  }

  private noteShown(document: vscode.TextDocument, position: vscode.Position, item: vscode.InlineCompletionItem): void {
    const arg = item.command?.command === 'reinf.accepted' ? (item.command.arguments?.[0] as AcceptedArg | undefined) : undefined;
    if (!arg?.interaction_id) {
      return;
    }
    let text = typeof item.insertText === 'string' ? item.insertText : item.insertText.value;
    let before: string | undefined;
    // An item whose range starts before the cursor repeats what is already typed; keep what it adds.
    if (item.range && item.range.start.isBefore(position)) {
      const typed = document.getText(new vscode.Range(item.range.start, position));
      if (text.startsWith(typed)) {
        text = text.slice(typed.length);
        before = item.range.start.line === position.line ? typed : undefined;
      }
    }
    this.tracker.shown(
      { interactionId: arg.interaction_id, text, uri: document.uri.toString(), at: position, before },
      Date.now(),
    );
  }
}

/** Whether VS Code draws `item` while the suggest widget has `selected` highlighted (always, without one). */
export function extendsSelected(item: vscode.InlineCompletionItem, selected: vscode.SelectedCompletionInfo | undefined): boolean {
  if (!selected) {
    return true;
  }
  const text = typeof item.insertText === 'string' ? item.insertText : item.insertText.value;
  return !!item.range && item.range.start.isEqual(selected.range.start) && text.startsWith(selected.text) && text.length > selected.text.length;
}

function isCode(doc: vscode.TextDocument): boolean {
  return doc.uri.scheme === 'file' || doc.uri.scheme === 'untitled';
}
