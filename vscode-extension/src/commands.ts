// The palette commands, "reinf: …". Each one is a request to the daemon and a message about the result.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import * as vscode from 'vscode';
import type { Daemon } from './connection';
import { resolveHome } from './daemon';
import { errorText, exportDefaultPath, insideAny, rollbackChoices, statusItems } from './format';
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
      const r = await daemon.request<{ run_id: number }>('reinf/retrain', {});
      refresh();
      void vscode.window.showInformationMessage(
        `reinf: training run ${r.run_id} started. It runs in the background; the status bar shows how far it has got.`,
      );
    },
    'reinf.retrainFreshJudge': async () => {
      const r = await daemon.request<{ run_id: number }>('reinf/retrain', { fresh_judge: true });
      refresh();
      void vscode.window.showInformationMessage(`reinf: training run ${r.run_id} started, with a new judge of your ratings.`);
    },
    'reinf.cancelTraining': async () => {
      const r = await daemon.request<{ cancelled: boolean }>('reinf/cancelTraining', {});
      refresh();
      // A cancelled run is announced by its own notification (statusBar.ts); only "nothing to cancel" is said here.
      if (!r.cancelled) {
        void vscode.window.showInformationMessage('reinf: no training run to cancel.');
      }
    },
    'reinf.showStatus': async () => {
      const s = await daemon.request<StatusResult>('reinf/status', {});
      // A quick pick, not a modal: it closes by itself and offers what to do next.
      const pick = await vscode.window.showQuickPick(statusItems(s), {
        title: 'reinf status',
        placeHolder: 'Pick an action, or press Escape',
      });
      if (pick?.command) {
        await vscode.commands.executeCommand(pick.command);
      }
    },
    'reinf.export': async () => {
      const format = await vscode.window.showQuickPick(['jsonl', 'parquet'], { title: 'reinf: export format' });
      if (!format) {
        return;
      }
      const folders = (vscode.workspace.workspaceFolders ?? []).map((f) => f.uri.fsPath);
      const target = await vscode.window.showSaveDialog({
        title: 'reinf: export interactions and ratings (your private data: keep it out of a repository)',
        defaultUri: vscode.Uri.file(exportDefaultPath(os.homedir(), format, new Date())),
        filters: { [format]: [format] },
      });
      if (!target) {
        return;
      }
      if (insideAny(target.fsPath, folders)) {
        const go = await vscode.window.showWarningMessage(
          `reinf: ${target.fsPath} is inside the workspace, where it could be committed. The export holds every prompt and answer.`,
          { modal: true },
          'Export There Anyway',
        );
        if (!go) {
          return;
        }
      }
      const r = await daemon.request<{ path: string; rows: number }>('reinf/export', { format, path: target.fsPath });
      const actions = format === 'jsonl' ? ['Open', 'Reveal'] : ['Reveal'];
      const pick = await vscode.window.showInformationMessage(`reinf: exported ${r.rows} rows to ${r.path}`, ...actions);
      if (pick === 'Open') {
        await vscode.window.showTextDocument(vscode.Uri.file(r.path));
      } else if (pick === 'Reveal') {
        await vscode.commands.executeCommand('revealFileInOS', vscode.Uri.file(r.path));
      }
    },
    'reinf.showLog': async () => {
      const home = resolveHome(vscode.workspace.getConfiguration('reinf').get<string>('home', ''), process.env, process.platform, os.homedir());
      const last = await daemon.request<StatusResult>('reinf/status', {}).then((s) => s.last_run?.run_id, () => undefined);
      const logs: { label: string; description: string; file?: string }[] = [
        { label: 'Extension log', description: 'this window: connection, requests, training notifications' },
      ];
      const candidates: [string, string][] = [
        ['Daemon log', path.join(home, 'daemon.log')],
        ['Daemon log (started by VS Code)', path.join(home, 'vscode-serve.log')],
      ];
      if (last != null) {
        candidates.push([`Training run ${last}`, path.join(home, 'runs', String(last), 'train.log')]);
      }
      for (const [label, file] of candidates) {
        if (fs.existsSync(file)) {
          logs.push({ label, description: file, file });
        }
      }
      const pick = logs.length === 1 ? logs[0] : await vscode.window.showQuickPick(logs, { title: 'reinf: which log?' });
      if (!pick) {
        return;
      }
      if (pick.file) {
        await vscode.window.showTextDocument(vscode.Uri.file(pick.file), { preview: true });
      } else {
        out.show();
      }
    },
    'reinf.rollback': async () => {
      const [adapters, runs] = await Promise.all([
        daemon.request<AdaptersResult>('reinf/adapters', {}),
        daemon.request<RunsResult>('reinf/runs', { limit: 100 }),
      ]);
      const pick = await vscode.window.showQuickPick(rollbackChoices(adapters.adapters, runs.runs, adapters.active), {
        title: 'reinf: which version of the model should answer?',
      });
      if (!pick) {
        return;
      }
      // The daemon's reinf/adapterChanged notification says what changed, once (statusBar.ts).
      await daemon.request<{ adapter_version: number }>('reinf/rollback', { version: pick.version });
      refresh();
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
