// Text the UI shows, computed from protocol results. Pure functions, unit-tested.
import * as path from 'path';
import type {
  Acceptance,
  AcceptanceBucket,
  AdapterChanged,
  AdapterInfo,
  RateResult,
  RunInfo,
  StatusResult,
  TrainingProgress,
} from './protocol';

const ACTIVE_STATES = new Set(['queued', 'running']);

/** A model name may be a local folder; the status bar shows its last part. */
export function shortModel(name: string): string {
  const parts = name.replace(/[\\/]+$/, '').split(/[\\/]/);
  return parts[parts.length - 1] || name;
}

export function adapterLabel(version: number): string {
  return version > 0 ? `adapter v${version}` : 'base';
}

export function percent(progress: number | null | undefined): string {
  if (typeof progress !== 'number' || !Number.isFinite(progress)) {
    return '';
  }
  const p = progress <= 1 ? progress * 100 : progress;
  return `${Math.round(Math.max(0, Math.min(100, p)))}%`;
}

export interface StatusBarText {
  text: string;
  tooltip: string;
}

/** The trainer's phases, in the words a user reads. */
const PHASE_WORDS: Record<string, string> = {
  snapshot: 'preparing',
  load: 'loading the model',
  reward_model: 'judging your ratings',
  ppo: 'training',
  imitate: 'training',
  eval: 'checking',
  save: 'saving',
  done: 'finishing',
};

export function phaseWords(phase: string | null | undefined): string {
  return (phase && PHASE_WORDS[phase]) || 'training';
}

/** "about 40 s left", "about 3 min left"; empty while no estimate is known. */
export function timeLeft(seconds: number | null | undefined): string {
  if (typeof seconds !== 'number' || !Number.isFinite(seconds) || seconds < 0) {
    return '';
  }
  if (seconds < 60) {
    return `about ${Math.max(5, Math.round(seconds / 5) * 5)} s left`;
  }
  if (seconds < 5400) {
    return `about ${Math.round(seconds / 60)} min left`;
  }
  return `about ${Math.round(seconds / 3600)} h left`;
}

/** The status bar item: model and adapter, and ratings to go, or the run in progress. */
export function statusBarText(s: StatusResult, progress?: TrainingProgress): StatusBarText {
  const model = shortModel(s.model);
  const run = progress && ACTIVE_STATES.has(progress.state) ? progress : undefined;
  const training = run ?? (ACTIVE_STATES.has(s.training.state) ? s.training : undefined);
  const lines = [
    `reinf: ${s.model} on ${s.device}, ${adapterLabel(s.adapter_version)}`,
    `${s.ratings_total} ratings; ${s.until_next_training} more until the next training`,
  ];
  if (training) {
    const why = training.trigger === 'threshold' ? ', started by your ratings' : '';
    lines.push(`Training run ${training.run_id ?? ''}${why}: ${training.message || phaseWords(training.phase)}`);
  } else {
    lines.push(s.last_run ? `last run ${s.last_run.run_id}: ${s.last_run.state}` : 'no training run yet');
  }
  if (s.acceptance) {
    lines.push(acceptanceText(s.acceptance));
  }
  const tooltip = [...lines, 'Click for details and actions'].join('\n');
  if (training) {
    const words = [phaseWords(training.phase), percent(training.progress), timeLeft(training.eta_s)].filter(Boolean);
    return { text: `$(sync~spin) reinf: ${words.join(' · ')}`, tooltip };
  }
  const version = s.adapter_version > 0 ? `v${s.adapter_version}` : 'base';
  return { text: `$(sparkle) ${model} ${version} · ${s.until_next_training} to train`, tooltip };
}

/** "Completions accepted: 34% of 120 in the last 7 days; since adapter v3: 41% of 52; base: 28% of 300". */
export function acceptanceText(a: Acceptance): string {
  const rate = (b: AcceptanceBucket) => (b.shown > 0 && b.rate !== null ? `${Math.round(b.rate * 100)}% of ${b.shown}` : 'none shown');
  const week = `Completions accepted: ${rate(a.last_7_days)} in the last 7 days`;
  return a.active.adapter_version > 0
    ? `${week}; since adapter v${a.active.adapter_version}: ${rate(a.active)}; base: ${rate(a.base)}`
    : `${week}; base (active): ${rate(a.base)}`;
}

export interface StatusItem {
  label: string;
  description?: string;
  detail?: string;
  /** The command run when the item is picked; none for a line that only informs. */
  command?: string;
}

/** "Show Status" as a quick pick: what the daemon reports, then what one can do about it. */
export function statusItems(s: StatusResult): StatusItem[] {
  const t = s.training;
  const running = ACTIVE_STATES.has(t.state);
  const training = running
    ? [phaseWords(t.phase), percent(t.progress), timeLeft(t.eta_s)].filter(Boolean).join(', ')
    : 'idle';
  const items: StatusItem[] = [
    { label: '$(server) Model', description: `${s.model} on ${s.device}` },
    { label: '$(versions) Answering with', description: s.adapter_version > 0 ? `adapter v${s.adapter_version}` : 'the base model (no adapter yet)' },
    { label: '$(star) Ratings', description: `${s.ratings_total}; ${s.until_next_training} more until the next training` },
    ...(s.acceptance ? [{ label: '$(check) Inline completions', description: acceptanceText(s.acceptance) }] : []),
    { label: '$(sync) Training', description: running ? `run ${t.run_id}: ${training}` : training, detail: running && t.message ? t.message : undefined },
  ];
  if (s.last_run) {
    const r = s.last_run;
    items.push({ label: '$(history) Last run', description: `${r.run_id}, ${r.state}`, detail: r.error ?? undefined });
  }
  items.push(
    running
      ? { label: '$(debug-stop) Cancel Training', command: 'reinf.cancelTraining' }
      : { label: '$(play) Retrain Now', description: 'train on your ratings so far', command: 'reinf.retrain' },
    { label: '$(checklist) Open Review Queue', description: 'rate answers you have not rated', command: 'reinf.openReviewQueue' },
    { label: '$(arrow-swap) Roll Back or Switch Adapter', command: 'reinf.rollback' },
    { label: '$(output) Show Log', command: 'reinf.showLog' },
  );
  return items;
}

/** Where an export goes unless the user picks elsewhere: the home folder, never the workspace. */
export function exportDefaultPath(homedir: string, format: string, now: Date): string {
  const day = now.toISOString().slice(0, 10);
  return path.join(homedir, `reinf-export-${day}.${format}`);
}

/** Whether `file` lies inside one of `folders`. */
export function insideAny(file: string, folders: readonly string[]): boolean {
  return folders.some((f) => {
    const rel = path.relative(f, file);
    return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel);
  });
}

export interface RollbackChoice {
  label: string;
  description: string;
  version: number;
}

/** Adapters one can switch to: published ones, the active one included. */
const USABLE = new Set(['active', 'retired']);

/** The version the daemon's "previous good version" would pick: the newest usable one before the active one,
 * else the base; undefined when the base is active and there is nothing earlier. */
export function previousGood(adapters: readonly AdapterInfo[], active: number): number | undefined {
  if (active === 0) {
    return undefined;
  }
  const earlier = adapters.filter((a) => a.version > 0 && a.version < active && USABLE.has(a.status)).map((a) => a.version);
  return earlier.length ? Math.max(...earlier) : 0;
}

/** The quick pick of "Roll Back or Switch Adapter": the previous good version when there is one, each usable
 * adapter newest first, the base. */
export function rollbackChoices(adapters: readonly AdapterInfo[], runs: readonly RunInfo[], active: number): RollbackChoice[] {
  const runById = new Map(runs.map((r) => [String(r.run_id), r]));
  const choices: RollbackChoice[] = [];
  const previous = previousGood(adapters, active);
  if (previous !== undefined) {
    choices.push({
      label: `$(history) Previous good version: ${previous > 0 ? `v${previous}` : 'the base model'}`,
      description: `before v${active}, the active one`,
      version: previous,
    });
  }
  const usable = adapters.filter((a) => a.version > 0 && USABLE.has(a.status)).sort((a, b) => b.version - a.version);
  for (const a of usable) {
    const run = a.run_id != null ? runById.get(String(a.run_id)) : undefined;
    choices.push({
      label: `v${a.version}`,
      description: [
        a.version === active ? 'active now' : a.version > active ? 'newer' : 'earlier',
        a.run_id != null ? `run ${a.run_id}${run ? ` (${run.trigger})` : ''}` : '',
        a.created ?? '',
      ]
        .filter(Boolean)
        .join(' · '),
      version: a.version,
    });
  }
  choices.push({ label: 'Base model (v0)', description: active === 0 ? 'active now' : 'no adapter', version: 0 });
  return choices;
}

/** The toast after the adapter changed: "switched to", "rolled back to", or a new one "is live". */
export function adapterChangedMessage(p: AdapterChanged, previous: number | undefined): string {
  const v = p.adapter_version;
  const name = v > 0 ? `adapter v${v}` : 'the base model';
  const reason = p.reason ?? '';
  if (reason.startsWith('published')) {
    return `reinf: ${name} is live, trained on your ratings (${reason}).`;
  }
  if (reason === 'rollback') {
    if (previous === v) {
      return `reinf: ${name} stays active.`;
    }
    if (previous !== undefined && v > previous) {
      return `reinf: switched forward to ${name}.`;
    }
    return v > 0 ? `reinf: rolled back to ${name}.` : 'reinf: back to the base model.';
  }
  return `reinf: now using ${name}${reason ? ` (${reason})` : ''}.`;
}

export interface RunEnd {
  level: 'warning' | 'error' | 'info';
  text: string;
  /** Buttons on the toast, in order. */
  actions: string[];
}

/** The notification for a run that ended without a new adapter, or undefined when there is none to give.
 * `active` is the adapter version serving now (0: the base model). */
export function runEndMessage(p: TrainingProgress, active: number | undefined): RunEnd | undefined {
  const why = p.message ? `: ${p.message}` : '';
  const stays = active ? `Adapter v${active} stays active.` : 'The base model stays.';
  switch (p.state) {
    case 'rejected': {
      const next =
        p.trigger === 'manual'
          ? 'Rate more answers (a comment says what to change), then run "reinf: Retrain Now" again.'
          : 'Keep rating: the next run starts by itself after more ratings.';
      return { level: 'warning', text: `reinf: training run ${p.run_id} was not published${why}. ${stays} ${next}`, actions: ['Open Review Queue', 'Show Log'] };
    }
    case 'failed':
      return { level: 'error', text: `reinf: training run ${p.run_id} failed${why}. ${stays}`, actions: ['Show Log'] };
    case 'cancelled':
      return { level: 'info', text: `reinf: training run ${p.run_id} was cancelled. ${stays}`, actions: [] };
    default:
      return undefined;
  }
}

/** "just now", "3 min ago", "2 h ago", "yesterday", "5 days ago", else the date. */
export function ago(ts: string, now: Date): string {
  const then = new Date(ts);
  const s = (now.getTime() - then.getTime()) / 1000;
  if (!Number.isFinite(s)) {
    return ts;
  }
  if (s < 60) {
    return 'just now';
  }
  if (s < 3600) {
    return `${Math.floor(s / 60)} min ago`;
  }
  if (s < 86400) {
    return `${Math.floor(s / 3600)} h ago`;
  }
  const days = Math.floor(s / 86400);
  return days === 1 ? 'yesterday' : days < 30 ? `${days} days ago` : then.toISOString().slice(0, 10);
}

/** Where a completion was asked for: "main.py, line 12". */
export function whereText(uri: string | null | undefined, line: number | null | undefined): string {
  if (!uri) {
    return '';
  }
  const name = decodeURIComponent(uri.replace(/[?#].*$/, '').split('/').pop() ?? uri);
  return typeof line === 'number' ? `${name}, line ${line}` : name;
}

/** What a stored rating holds, in words: "Saved: thumbs up, 4 stars and your comment." */
export function savedMessage(r: { thumbs?: string; stars?: number; comment?: string }): string {
  const parts = [
    r.thumbs ? `thumbs ${r.thumbs}` : '',
    r.stars ? `${r.stars} star${r.stars === 1 ? '' : 's'}` : '',
    r.comment ? 'your comment' : '',
  ].filter(Boolean);
  const list = parts.length > 1 ? `${parts.slice(0, -1).join(', ')} and ${parts[parts.length - 1]}` : parts[0] ?? 'rating';
  return `Saved: ${list}.`;
}

/** How many ratings are still to go before training starts by itself. */
export function untilMessage(r: Pick<RateResult, 'until_next_training'>): string {
  const n = r.until_next_training;
  return n > 0 ? `${n} more rating${n === 1 ? '' : 's'} until the next training.` : 'Training starts now.';
}

export function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
