// The palette commands, "reinf: …". Each one is a request to the daemon and a message about the result.
import * as os from 'os';
import * as path from 'path';
import * as vscode from 'vscode';
import type { Daemon } from './connection';
import { errorText, rollbackChoices, statusReport } from './format';
import type { AdaptersResult, RunsResult, StatusResult } from './protocol';
import { ReviewPanel } from './reviewPanel';
import type { StatusBar } from './statusBar';

export function registerCommands(
  context: vscode.ExtensionContext,
  daemon: Daemon,
  statusBar: StatusBar,
  out: vscode.LogOutputChannel,
): void {
  const refresh = () => void statusBar.refresh();
  const commands: Record<string, () => Promise<unknown>> = {
    'reinf.retrain': async () => {
      const r = await daemon.request<{ run_id: string | number }>('reinf/retrain', {});
      refresh();
      void vscode.window.showInformationMessage(`reinf: training run ${r.run_id} started.`);
    },
    'reinf.retrainFreshJudge': async () => {
      const r = await daemon.request<{ run_id: string | number }>('reinf/retrain', { fresh_judge: true });
      refresh();
      void vscode.window.showInformationMessage(`reinf: training run ${r.run_id} started, with a new judge of your ratings.`);
    },
    'reinf.cancelTraining': async () => {
      const r = await daemon.request<{ cancelled: boolean }>('reinf/cancelTraining', {});
      refresh();
      void vscode.window.showInformationMessage(r.cancelled ? 'reinf: training cancelled.' : 'reinf: no training run to cancel.');
    },
    'reinf.showStatus': async () => {
      const s = await daemon.request<StatusResult>('reinf/status', {});
      out.info(`status:\n${statusReport(s)}`);
      await vscode.window.showInformationMessage('reinf status', { modal: true, detail: statusReport(s) });
    },
    'reinf.export': async () => {
      const format = await vscode.window.showQuickPick(['jsonl', 'parquet'], { title: 'reinf: export format' });
      if (!format) {
        return;
      }
      const folder = vscode.workspace.workspaceFolders?.[0]?.uri ?? vscode.Uri.file(os.homedir());
      const target = await vscode.window.showSaveDialog({
        title: 'reinf: export interactions and ratings',
        defaultUri: vscode.Uri.joinPath(folder, `reinf-export.${format}`),
        filters: { [format]: [format] },
      });
      if (!target) {
        return;
      }
      const r = await daemon.request<{ path: string; rows: number }>('reinf/export', { format, path: target.fsPath });
      void vscode.window.showInformationMessage(`reinf: exported ${r.rows} rows to ${path.basename(r.path)}.`);
    },
    'reinf.showLog': async () => out.show(),
    'reinf.rollback': async () => {
      const [adapters, runs] = await Promise.all([
        daemon.request<AdaptersResult>('reinf/adapters', {}),
        daemon.request<RunsResult>('reinf/runs', { limit: 100 }),
      ]);
      const pick = await vscode.window.showQuickPick(rollbackChoices(adapters.adapters, runs.runs, adapters.active), {
        title: 'reinf: roll back to which adapter?',
      });
      if (!pick) {
        return;
      }
      const r = await daemon.request<{ adapter_version: number }>(
        'reinf/rollback',
        pick.version === undefined ? {} : { version: pick.version },
      );
      refresh();
      void vscode.window.showInformationMessage(
        r.adapter_version > 0 ? `reinf: adapter v${r.adapter_version} is active.` : 'reinf: the base model is active.',
      );
    },
    'reinf.openReviewQueue': async () => ReviewPanel.show(context.extensionUri, daemon, refresh),
    'reinf.reconnect': async () => daemon.reconnect(),
  };
  for (const [id, run] of Object.entries(commands)) {
    context.subscriptions.push(
      vscode.commands.registerCommand(id, async () => {
        try {
          await run();
        } catch (e) {
          out.error(`${id}: ${errorText(e)}`);
          const pick = await vscode.window.showErrorMessage(`reinf: ${errorText(e)}`, 'Show Log');
          if (pick) {
            out.show(true);
          }
        }
      }),
    );
  }
}
