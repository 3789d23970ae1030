import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  adapterChangedMessage,
  ago,
  exportDefaultPath,
  insideAny,
  percent,
  phaseWords,
  previousGood,
  rollbackChoices,
  runEndMessage,
  savedMessage,
  shortModel,
  statusBarText,
  statusItems,
  timeLeft,
  untilMessage,
  whereText,
} from '../format';
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

test('status bar: a run in progress says what it does in words, and the time left once known', () => {
  const progress = { run_id: 5, state: 'running', phase: 'ppo', progress: 0.456, message: 'PPO step 3/8', eta_s: 130 };
  assert.equal(statusBarText(idle, progress).text, '$(sync~spin) reinf: training · 46% · about 2 min left');
  assert.match(statusBarText(idle, progress).tooltip, /Training run 5: PPO step 3\/8/);
  const finished = { ...progress, state: 'published' };
  assert.match(statusBarText(idle, finished).text, /v3 · 8 to train/);
  const fromStatus = { ...idle, training: { state: 'running', run_id: 5, phase: 'reward_model', progress: 0.1, eta_s: null } };
  assert.equal(statusBarText(fromStatus).text, '$(sync~spin) reinf: judging your ratings · 10%');
  const checking = { ...progress, phase: 'eval', progress: 0.9, eta_s: 12 };
  assert.equal(statusBarText(idle, checking).text, '$(sync~spin) reinf: checking · 90% · about 10 s left');
  assert.doesNotMatch(statusBarText(idle, { ...progress, phase: 'reward_model' }).text, /reward_model|ppo/);
});

test('time left reads seconds, minutes and hours', () => {
  assert.deepEqual(
    [timeLeft(null), timeLeft(3), timeLeft(44), timeLeft(61), timeLeft(1700), timeLeft(9000)],
    ['', 'about 5 s left', 'about 45 s left', 'about 1 min left', 'about 28 min left', 'about 3 h left'],
  );
  assert.equal(phaseWords('reward_model'), 'judging your ratings');
  assert.equal(phaseWords('something_new'), 'training');
});

test('the tooltip says how often completions were accepted: this week, since the adapter went live, the base', () => {
  const bucket = (shown: number, accepted: number) => ({ shown, accepted, partially_accepted: 0, rate: shown ? accepted / shown : null });
  const acceptance = { last_7_days: bucket(120, 41), active: { ...bucket(52, 21), adapter_version: 3 }, base: bucket(300, 84) };
  const { tooltip } = statusBarText({ ...idle, acceptance });
  assert.match(tooltip, /Completions accepted: 34% of 120 in the last 7 days; since adapter v3: 40% of 52; base: 28% of 300/);
  const base = { ...acceptance, last_7_days: bucket(0, 0), active: { ...bucket(0, 0), adapter_version: 0 } };
  const items = statusItems({ ...idle, adapter_version: 0, acceptance: base });
  const line = items.find((i) => i.label.includes('Inline completions'));
  assert.match(line?.description ?? '', /^Completions accepted: none shown in the last 7 days; base \(active\): 28% of 300$/);
  assert.doesNotMatch(statusBarText(idle).tooltip, /accepted/);
});

test('percent reads fractions and percentages', () => {
  assert.deepEqual([percent(0), percent(0.5), percent(1), percent(37), percent(null)], ['0%', '50%', '100%', '37%', '']);
});

test('show status: the facts, then the actions that fit', () => {
  const items = statusItems(idle);
  assert.deepEqual(items.filter((i) => i.command).map((i) => i.command), [
    'reinf.retrain',
    'reinf.openReviewQueue',
    'reinf.rollback',
    'reinf.showLog',
  ]);
  assert.match(items.find((i) => i.label.includes('Ratings'))!.description!, /17; 8 more until the next training/);
  const running = statusItems({ ...idle, training: { state: 'running', run_id: 9, phase: 'eval', progress: 0.5, eta_s: 300 } });
  assert.ok(running.some((i) => i.command === 'reinf.cancelTraining'));
  assert.equal(running.find((i) => i.label.includes('Training'))!.description, 'run 9: checking, 50%, about 5 min left');
});

test('rollback choices: the previous good version, each usable adapter newest first, then the base', () => {
  const adapters = [
    { version: 1, run_id: 1, status: 'retired', created: '2025-01-01' },
    { version: 3, run_id: 4, status: 'rejected' },
    { version: 2, run_id: 3, status: 'active', created: '2025-01-02' },
  ];
  const runs = [
    { run_id: 1, state: 'published', trigger: 'threshold' },
    { run_id: 3, state: 'published', trigger: 'manual' },
  ];
  const choices = rollbackChoices(adapters, runs, 2);
  assert.deepEqual(choices.map((c) => [c.label, c.version]), [
    ['$(history) Previous good version: v1', 1],
    ['v2', 2],
    ['v1', 1],
    ['Base model (v0)', 0],
  ]);
  assert.equal(choices[1].description, 'active now · run 3 (manual) · 2025-01-02');
  assert.equal(choices[2].description, 'earlier · run 1 (threshold) · 2025-01-01');
  // With the base serving there is nothing earlier, so nothing is called "previous"; v2 is newer.
  const fromBase = rollbackChoices(adapters, runs, 0);
  assert.ok(!fromBase.some((c) => c.label.includes('Previous')));
  assert.match(fromBase[0].description, /^newer/);
  assert.equal(previousGood(adapters, 1), 0);
  assert.equal(previousGood(adapters, 0), undefined);
});

test('an adapter change is named for what it is: live, back, forward', () => {
  assert.equal(adapterChangedMessage({ adapter_version: 2, reason: 'rollback' }, 1), 'reinf: switched forward to adapter v2.');
  assert.equal(adapterChangedMessage({ adapter_version: 1, reason: 'rollback' }, 2), 'reinf: rolled back to adapter v1.');
  assert.equal(adapterChangedMessage({ adapter_version: 0, reason: 'rollback' }, 2), 'reinf: back to the base model.');
  assert.equal(adapterChangedMessage({ adapter_version: 2, reason: 'rollback' }, 2), 'reinf: adapter v2 stays active.');
  assert.match(adapterChangedMessage({ adapter_version: 4, reason: 'published by run 9' }, 3), /adapter v4 is live, trained on your ratings/);
});

test('a rejected run says why, what stays, and what to do next', () => {
  const p = { run_id: 7, state: 'rejected', phase: 'eval', progress: 1, message: 'KL 0.4 over the bound 0.2', trigger: 'manual' };
  const m = runEndMessage(p, 0)!;
  assert.equal(m.level, 'warning');
  assert.match(m.text, /^reinf: training run 7 was not published: KL 0\.4 over the bound 0\.2\. The base model stays\. /);
  assert.match(m.text, /then run "reinf: Retrain Now" again/);
  assert.doesNotMatch(m.text, /active adapter/);
  assert.match(runEndMessage(p, 3)!.text, /Adapter v3 stays active/);
  assert.match(runEndMessage({ ...p, trigger: 'threshold' }, 3)!.text, /next run starts by itself/);
  assert.equal(runEndMessage({ run_id: 7, state: 'running' }, 0), undefined);
  assert.equal(runEndMessage({ run_id: 7, state: 'failed', message: 'OOM' }, 0)?.level, 'error');
});

test('a saved rating is described, so each one is seen to be stored', () => {
  assert.equal(savedMessage({ thumbs: 'up' }), 'Saved: thumbs up.');
  assert.equal(savedMessage({ thumbs: 'up', stars: 4 }), 'Saved: thumbs up and 4 stars.');
  assert.equal(savedMessage({ thumbs: 'down', stars: 1, comment: 'x' }), 'Saved: thumbs down, 1 star and your comment.');
  assert.equal(untilMessage({ until_next_training: 1 }), '1 more rating until the next training.');
  assert.equal(untilMessage({ until_next_training: 0 }), 'Training starts now.');
});

test('an export goes to the home folder by default, and one inside the workspace is noticed', () => {
  assert.equal(exportDefaultPath('/home/u', 'jsonl', new Date('2026-03-04T05:06:07Z')), '/home/u/reinf-export-2026-03-04.jsonl');
  assert.equal(insideAny('/w/proj/x.jsonl', ['/w/proj']), true);
  assert.equal(insideAny('/w/project2/x.jsonl', ['/w/proj']), false);
  assert.equal(insideAny('/home/u/x.jsonl', []), false);
});

test('the review queue says when as "3 min ago", and where a completion was', () => {
  const now = new Date('2026-03-04T12:00:00Z');
  assert.deepEqual(
    ['2026-03-04T11:59:30Z', '2026-03-04T11:57:00+00:00', '2026-03-04T09:00:00Z', '2026-03-03T10:00:00Z', '2026-02-27T12:00:00Z', '2025-01-01T00:00:00Z'].map((t) => ago(t, now)),
    ['just now', '3 min ago', '3 h ago', 'yesterday', '5 days ago', '2025-01-01'],
  );
  assert.equal(whereText('file:///w/proj/src/main%20app.py', 12), 'main app.py, line 12');
  assert.equal(whereText('untitled:Untitled-1', undefined), 'untitled:Untitled-1');
  assert.equal(whereText(null, 3), '');
});
