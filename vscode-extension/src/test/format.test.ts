import assert from 'node:assert/strict';
import { test } from 'node:test';
import { percent, rollbackChoices, runEndMessage, shortModel, statusBarText, statusReport } from '../format';
import type { StatusResult } from '../protocol';

const idle: StatusResult = {
  model: '/home/u/.cache/reinf/models/reinf-tiny-test/',
  device: 'cpu',
  adapter_version: 3,
  ratings_total: 17,
  until_next_training: 8,
  training: { state: 'idle' },
  last_run: { run_id: 4, state: 'published', trigger: 'manual' },
};

test('status bar: model, adapter version and ratings to go', () => {
  assert.equal(shortModel('Qwen/Qwen2.5-Coder-0.5B'), 'Qwen2.5-Coder-0.5B');
  const { text, tooltip } = statusBarText(idle);
  assert.equal(text, '$(sparkle) reinf-tiny-test v3 · 8 to train');
  assert.match(tooltip, /8 more until the next training/);
  assert.equal(statusBarText({ ...idle, adapter_version: 0 }).text, '$(sparkle) reinf-tiny-test base · 8 to train');
});

test('status bar: a run in progress shows its phase and progress', () => {
  const progress = { run_id: 5, state: 'running', phase: 'ppo', progress: 0.456, message: '' };
  assert.equal(statusBarText(idle, progress).text, '$(sync~spin) reinf: training 46% ppo');
  const finished = { ...progress, state: 'published' };
  assert.match(statusBarText(idle, finished).text, /v3 · 8 to train/);
  const fromStatus = { ...idle, training: { state: 'running', run_id: 5, phase: 'reward', progress: 10 } };
  assert.equal(statusBarText(fromStatus).text, '$(sync~spin) reinf: training 10% reward');
});

test('the tooltip says how often completions were accepted: this week, since the adapter went live, the base', () => {
  const bucket = (shown: number, accepted: number) => ({ shown, accepted, partially_accepted: 0, rate: shown ? accepted / shown : null });
  const acceptance = { last_7_days: bucket(120, 41), active: { ...bucket(52, 21), adapter_version: 3 }, base: bucket(300, 84) };
  const { tooltip } = statusBarText({ ...idle, acceptance });
  assert.match(tooltip, /Completions accepted: 34% of 120 in the last 7 days; since adapter v3: 40% of 52; base: 28% of 300/);
  const base = { ...acceptance, last_7_days: bucket(0, 0), active: { ...bucket(0, 0), adapter_version: 0 } };
  assert.match(statusReport({ ...idle, adapter_version: 0, acceptance: base }), /none shown in the last 7 days; base \(active\): 28% of 300/);
  assert.doesNotMatch(statusBarText(idle).tooltip, /accepted/);
});

test('percent reads fractions and percentages', () => {
  assert.deepEqual([percent(0), percent(0.5), percent(1), percent(37), percent(null)], ['0%', '50%', '100%', '37%', '']);
});

test('status report lists model, adapter, ratings and training', () => {
  const r = statusReport({ ...idle, training: { state: 'running', run_id: 9, phase: 'ppo', progress: 0.5 } });
  assert.match(r, /Adapter: adapter v3/);
  assert.match(r, /Training: running \(run 9, ppo, 50%\)/);
  assert.match(statusReport(idle), /Training: idle\n/);
});

test('rollback choices: previous, each usable adapter newest first, then the base', () => {
  const choices = rollbackChoices(
    [
      { version: 1, run_id: 1, status: 'retired', created: '2025-01-01' },
      { version: 3, run_id: 4, status: 'rejected' },
      { version: 2, run_id: 3, status: 'active', created: '2025-01-02' },
    ],
    [
      { run_id: 1, state: 'published', trigger: 'threshold' },
      { run_id: 3, state: 'published', trigger: 'manual' },
    ],
    2,
  );
  assert.deepEqual(choices.map((c) => [c.label, c.version]), [
    ['Previous good version', undefined],
    ['v2', 2],
    ['v1', 1],
    ['Base model (v0)', 0],
  ]);
  assert.equal(choices[1].description, 'active · run 3 (manual) · 2025-01-02');
  assert.equal(choices[2].description, 'retired · run 1 (threshold) · 2025-01-01');
});

test('a rejected run gives a warning with the reason', () => {
  const m = runEndMessage({ run_id: 7, state: 'rejected', phase: 'eval', progress: 1, message: 'KL 0.4 over the bound 0.2' });
  assert.deepEqual(m, { level: 'warning', text: 'reinf: training run 7 was rejected: KL 0.4 over the bound 0.2. The active adapter stays.' });
  assert.equal(runEndMessage({ run_id: 7, state: 'running' }), undefined);
  assert.equal(runEndMessage({ run_id: 7, state: 'failed', message: 'OOM' })?.level, 'error');
});
