// Text the UI shows, computed from protocol results. Pure functions, unit-tested.
import type { Acceptance, AcceptanceBucket, AdapterInfo, RateResult, RunInfo, StatusResult, TrainingProgress } from './protocol';

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

/** The status bar item: model and adapter, and ratings to go, or the run in progress. */
export function statusBarText(s: StatusResult, progress?: TrainingProgress): StatusBarText {
  const model = shortModel(s.model);
  const tooltip = [
    `reinf: ${s.model} on ${s.device}, ${adapterLabel(s.adapter_version)}`,
    `${s.ratings_total} ratings; ${s.until_next_training} more until the next training`,
    s.last_run ? `last run ${s.last_run.run_id}: ${s.last_run.state}` : 'no training run yet',
    ...(s.acceptance ? [acceptanceText(s.acceptance)] : []),
    'Click for details',
  ].join('\n');
  const run = progress && ACTIVE_STATES.has(progress.state) ? progress : undefined;
  if (run || ACTIVE_STATES.has(s.training.state)) {
    const phase = run?.phase ?? s.training.phase ?? run?.state ?? s.training.state;
    const pct = percent(run?.progress ?? s.training.progress);
    return { text: `$(sync~spin) reinf: training ${[pct, phase].filter(Boolean).join(' ')}`, tooltip };
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

/** Several lines for "Show Status". */
export function statusReport(s: StatusResult): string {
  const t = s.training;
  const detail = [t.run_id != null ? `run ${t.run_id}` : '', t.phase ?? '', percent(t.progress)].filter(Boolean).join(', ');
  const lines = [
    `Model: ${s.model} (${s.device})`,
    `Adapter: ${adapterLabel(s.adapter_version)}`,
    `Ratings: ${s.ratings_total}, ${s.until_next_training} more until the next training`,
    `Training: ${s.training.state}${detail ? ` (${detail})` : ''}`,
  ];
  if (s.last_run) {
    lines.push(`Last run: ${s.last_run.run_id}, ${s.last_run.state}${s.last_run.error ? `: ${s.last_run.error}` : ''}`);
  }
  if (s.acceptance) {
    lines.push(acceptanceText(s.acceptance));
  }
  return lines.join('\n');
}

export interface RollbackChoice {
  label: string;
  description: string;
  /** undefined: let the daemon pick the previous good version. */
  version: number | undefined;
}

/** Adapters one can go back to: published ones, the active one included. */
const USABLE = new Set(['active', 'retired']);

/** The quick pick of Rollback Adapter: the previous good version, each usable adapter newest first, the base. */
export function rollbackChoices(adapters: readonly AdapterInfo[], runs: readonly RunInfo[], active: number): RollbackChoice[] {
  const runById = new Map(runs.map((r) => [String(r.run_id), r]));
  const choices: RollbackChoice[] = [
    { label: 'Previous good version', description: 'the daemon picks the adapter before the active one', version: undefined },
  ];
  const usable = adapters.filter((a) => a.version > 0 && USABLE.has(a.status)).sort((a, b) => b.version - a.version);
  for (const a of usable) {
    const run = a.run_id != null ? runById.get(String(a.run_id)) : undefined;
    choices.push({
      label: `v${a.version}`,
      description: [
        a.version === active ? 'active' : a.status,
        a.run_id != null ? `run ${a.run_id}${run ? ` (${run.trigger})` : ''}` : '',
        a.created ?? '',
      ]
        .filter(Boolean)
        .join(' · '),
      version: a.version,
    });
  }
  choices.push({ label: 'Base model (v0)', description: active === 0 ? 'active' : 'no adapter', version: 0 });
  return choices;
}

/** The notification for a run that ended without a new adapter, or undefined when there is none to give. */
export function runEndMessage(p: TrainingProgress): { level: 'warning' | 'error' | 'info'; text: string } | undefined {
  const why = p.message ? `: ${p.message}` : '';
  switch (p.state) {
    case 'rejected':
      return { level: 'warning', text: `reinf: training run ${p.run_id} was rejected${why}. The active adapter stays.` };
    case 'failed':
      return { level: 'error', text: `reinf: training run ${p.run_id} failed${why}` };
    case 'cancelled':
      return { level: 'info', text: `reinf: training run ${p.run_id} was cancelled` };
    default:
      return undefined;
  }
}

export function ratedMessage(r: RateResult): string {
  const n = r.until_next_training;
  return `Saved. ${n} more rating${n === 1 ? '' : 's'} until the next training.`;
}

export function errorText(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
