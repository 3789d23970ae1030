// "reinf: Open Review Queue": a webview listing unrated interactions (`reinf/history {unrated_only}`) to
// rate with thumbs, stars and a comment.
import * as vscode from 'vscode';
import type { Daemon } from './connection';
import { ago, errorText, untilMessage, whereText } from './format';
import type { FromReview, ToReview } from './messages';
import type { HistoryResult, RateResult, StatusResult } from './protocol';
import { submitRating } from './ratings';
import { fillWebview } from './webviewShell';

const PAGE = 20;

export class ReviewPanel {
  private static current: ReviewPanel | undefined;

  static show(extensionUri: vscode.Uri, daemon: Daemon, rated: (r: RateResult) => void): void {
    if (ReviewPanel.current) {
      ReviewPanel.current.panel.reveal();
      void ReviewPanel.current.load(0);
      return;
    }
    ReviewPanel.current = new ReviewPanel(extensionUri, daemon, rated);
  }

  private readonly panel: vscode.WebviewPanel;

  private constructor(
    extensionUri: vscode.Uri,
    private readonly daemon: Daemon,
    private readonly rated: (r: RateResult) => void,
  ) {
    this.panel = vscode.window.createWebviewPanel('reinf.review', 'reinf: Review Queue', vscode.ViewColumn.Active, {
      enableScripts: true,
    });
    fillWebview(this.panel.webview, extensionUri, { title: 'reinf review queue', script: 'review.js', body: REVIEW_BODY });
    this.panel.webview.onDidReceiveMessage((m: FromReview) => this.onMessage(m));
    this.panel.onDidDispose(() => (ReviewPanel.current = undefined));
  }

  /** The daemon's count of ratings to go changed: say it under the newest rating in the open queue. */
  static statusChanged(s: StatusResult): void {
    ReviewPanel.current?.post({ type: 'until', text: untilMessage(s) });
  }

  private post(m: ToReview): void {
    void this.panel.webview.postMessage(m);
  }

  private async onMessage(m: FromReview): Promise<void> {
    switch (m.type) {
      case 'ready':
      case 'refresh':
        return this.load(0);
      case 'more':
        return this.load(m.offset);
      case 'rate':
        return this.post(await submitRating(this.daemon, m.rating, this.rated));
    }
  }

  private async load(offset: number): Promise<void> {
    try {
      const r = await this.daemon.request<HistoryResult>('reinf/history', { unrated_only: true, limit: PAGE, offset });
      const now = new Date();
      const items = r.items.map((i) => ({
        interactionId: i.interaction_id,
        kind: i.kind,
        when: ago(i.ts, now),
        ts: i.ts,
        where: i.kind === 'completion' ? whereText(i.uri, i.line) : '',
        prompt: i.prompt,
        response: i.response,
      }));
      this.post({ type: 'items', items, total: r.total, append: offset > 0 });
    } catch (e) {
      this.post({ type: 'error', message: errorText(e) });
    }
  }
}

const REVIEW_BODY = `
<main class="review">
  <header class="row">
    <h1>Review queue</h1>
    <span id="count" class="muted"></span>
    <span class="grow"></span>
    <button id="refresh" type="button" class="secondary">Refresh</button>
  </header>
  <p class="muted">Interactions you have not rated yet. Each rating is stored at once and counts towards the next training.</p>
  <div id="error" class="error" role="alert" hidden></div>
  <div id="items" class="items"></div>
  <button id="more" type="button" class="secondary" hidden>Load more</button>
</main>`;
