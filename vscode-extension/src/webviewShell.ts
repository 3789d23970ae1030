// Fill a webview with one of reinf's pages: scripts on, resources only from dist/webview.
import * as vscode from 'vscode';
import { makeNonce, webviewHtml } from './webviewHtml';

export function fillWebview(
  webview: vscode.Webview,
  extensionUri: vscode.Uri,
  page: { title: string; script: string; body: string },
): void {
  const root = vscode.Uri.joinPath(extensionUri, 'dist', 'webview');
  webview.options = { enableScripts: true, localResourceRoots: [root] };
  const asset = (name: string) => webview.asWebviewUri(vscode.Uri.joinPath(root, name)).toString();
  webview.html = webviewHtml({
    title: page.title,
    cspSource: webview.cspSource,
    nonce: makeNonce(),
    styleUri: asset('webview.css'),
    scriptUri: asset(page.script),
    body: page.body,
  });
}
