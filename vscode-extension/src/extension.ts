// reinf for VS Code: a thin client. The daemon holds the model, the data and the logic; this connects to
// it, forwards requests, and draws the UI.
import * as vscode from 'vscode';
import { ChatView } from './chatView';
import { registerCommands } from './commands';
import { Daemon } from './connection';
import { InlineFeedback } from './inline';
import { ReviewPanel } from './reviewPanel';
import { StatusBar } from './statusBar';

let daemon: Daemon | undefined;

export function activate(context: vscode.ExtensionContext): void {
  const out = vscode.window.createOutputChannel('reinf', { log: true });
  const inline = new InlineFeedback();
  daemon = new Daemon(out, inline.middleware);
  inline.attach(daemon);
  const statusBar = new StatusBar(daemon, out);
  const refresh = () => void statusBar.refresh();
  const chat = new ChatView(context.extensionUri, daemon, refresh, context.workspaceState);
  context.subscriptions.push(
    out,
    inline,
    daemon,
    statusBar,
    ...statusBar.attach(),
    vscode.window.registerWebviewViewProvider(ChatView.viewId, chat, { webviewOptions: { retainContextWhenHidden: true } }),
    daemon.onState((s) => chat.setConnection(s.kind === 'connected', s.message)),
    chat.onDidChangeFocus((focused) => inline.panelFocused(focused)),
    statusBar.onStatus((s) => {
      chat.statusChanged(s);
      ReviewPanel.statusChanged(s);
    }),
    vscode.workspace.onDidChangeConfiguration((e) => {
      if (e.affectsConfiguration('reinf.home') || e.affectsConfiguration('reinf.serverCommand')) {
        void daemon?.reconnect();
      }
    }),
  );
  registerCommands(context, daemon, statusBar, out);
  daemon.start();
}

export async function deactivate(): Promise<void> {
  daemon?.dispose();
  daemon = undefined;
}
