// The status bar item and the notifications about training. It shows what the daemon reports; it keeps
// only the last report, to redraw when a progress notification comes in.
import * as vscode from 'vscode';
import type { LanguageClient } from 'vscode-languageclient/node';
import type { ConnectionState, Daemon } from './connection';
import { adapterChangedMessage, errorText, percent, runEndMessage, statusBarText } from './format';
import type { AdapterChanged, StatusResult, TrainingProgress } from './protocol';

export class StatusBar implements vscode.Disposable {
  private readonly item = vscode.window.createStatusBarItem('reinf.status', vscode.StatusBarAlignment.Right, 100);
  private last: StatusResult | undefined;
  private progress: TrainingProgress | undefined;
  private readonly statusEmitter = new vscode.EventEmitter<StatusResult>();
  /** Fires with each status the daemon reports. */
  readonly onStatus = this.statusEmitter.event;
  /** Whether this window was connected once: a daemon started after that is a restart. */
  private wasConnected = false;
  /** Runs already announced, so that each start is said once. */
  private readonly announced = new Set<string>();

  constructor(
    private readonly daemon: Daemon,
    private readonly out: vscode.LogOutputChannel,
  ) {
    this.item.name = 'reinf';
    this.item.command = 'reinf.showStatus';
    this.showConnection(daemon.current);
    this.item.show();
  }

  attach(): vscode.Disposable[] {
    return [
      this.daemon.onState((s) => this.showConnection(s)),
      this.daemon.onClient((client) => this.listen(client)),
    ];
  }

  /** Ask the daemon for its status and redraw. Errors only go to the log: the connection state says the rest. */
  async refresh(): Promise<StatusResult | undefined> {
    try {
      this.last = await this.daemon.request<StatusResult>('reinf/status', {});
      this.draw();
      this.statusEmitter.fire(this.last);
      return this.last;
    } catch (e) {
      this.out.warn(`reinf/status failed: ${errorText(e)}`);
      return undefined;
    }
  }

  dispose(): void {
    this.item.dispose();
    this.statusEmitter.dispose();
  }

  private listen(client: LanguageClient): void {
    client.onNotification('reinf/trainingProgress', (p: TrainingProgress) => this.onProgress(p));
    client.onNotification('reinf/adapterChanged', (p: AdapterChanged) => {
      const text = adapterChangedMessage(p, this.last?.adapter_version);
      this.out.info(text);
      void vscode.window.showInformationMessage(text);
      void this.refresh();
    });
    void this.refresh();
  }

  private onProgress(p: TrainingProgress): void {
    this.out.info(`training run ${p.run_id}: ${p.state} ${p.phase ?? ''} ${percent(p.progress)} ${p.message ?? ''}`);
    this.progress = p;
    const run = String(p.run_id);
    if (p.state === 'running' && !this.announced.has(run)) {
      this.announced.add(run);
      // A manual run is announced by the command that started it; one the ratings started needs saying.
      if (p.trigger === 'threshold' && (p.elapsed_s ?? 0) < 30) {
        void vscode.window
          .showInformationMessage(
            'reinf: you have rated enough answers, so training has started in the background. Keep working; the status bar shows how far it has got.',
            'Cancel Training',
          )
          .then((pick) => pick && vscode.commands.executeCommand('reinf.cancelTraining'));
      }
    }
    const end = runEndMessage(p, this.last?.adapter_version);
    if (end) {
      const show = { warning: vscode.window.showWarningMessage, error: vscode.window.showErrorMessage, info: vscode.window.showInformationMessage }[end.level];
      void show(end.text, ...end.actions).then((pick) => {
        if (pick === 'Show Log') {
          void vscode.commands.executeCommand('reinf.showLog');
        } else if (pick === 'Open Review Queue') {
          void vscode.commands.executeCommand('reinf.openReviewQueue');
        }
      });
    }
    if (p.state !== 'running' && p.state !== 'queued') {
      void this.refresh();
    } else {
      this.draw();
    }
  }

  private showConnection(s: ConnectionState): void {
    if (s.kind === 'connected') {
      this.item.backgroundColor = undefined;
      this.item.command = 'reinf.showStatus';
      this.wasConnected = true;
      this.draw();
      return;
    }
    this.last = undefined;
    this.progress = undefined;
    // While it is not connected, a click reconnects (and starts the daemon if none answers) at once.
    this.item.command = 'reinf.reconnect';
    if (s.kind === 'connecting') {
      const starting = s.message.startsWith('starting the reinf daemon');
      this.item.text = starting
        ? `$(loading~spin) reinf: ${this.wasConnected ? 'restarting' : 'starting'} the daemon…`
        : '$(loading~spin) reinf: connecting…';
      this.item.backgroundColor = undefined;
    } else {
      this.item.text = '$(debug-disconnect) reinf: not connected';
      this.item.backgroundColor = new vscode.ThemeColor('statusBarItem.errorBackground');
    }
    this.item.tooltip = `${s.message}\nClick to reconnect now; "reinf: Show Log" has the full story.`;
  }

  private draw(): void {
    if (!this.last) {
      this.item.text = '$(sparkle) reinf';
      this.item.tooltip = 'reinf: connected';
      return;
    }
    const { text, tooltip } = statusBarText(this.last, this.progress);
    this.item.text = text;
    this.item.tooltip = tooltip;
  }
}
