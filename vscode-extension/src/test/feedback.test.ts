import assert from 'node:assert/strict';
import { test } from 'node:test';
import { advance, FeedbackTracker, Suggestion } from '../feedback';
import type { FeedbackParams } from '../protocol';

const URI = 'file:///w/a.py';
const S: Suggestion = { interactionId: 'i1', text: 'return a + b', uri: URI, at: { line: 3, character: 4 } };

function tracker(): { t: FeedbackTracker; sent: FeedbackParams[] } {
  const sent: FeedbackParams[] = [];
  return { t: new FeedbackTracker((p) => sent.push(p)), sent };
}

const insert = (line: number, character: number, text: string) => [
  { start: { line, character }, end: { line, character }, text },
];

test('Tab: the insertion, the cursor move, then the command give one "accepted"', () => {
  const { t, sent } = tracker();
  t.shown(S, 1000);
  t.edited(URI, insert(3, 4, S.text), 1400);
  t.cursorMoved(URI, { line: 3, character: 16 }, 1400);
  t.accepted('i1', S.text, 1401);
  assert.deepEqual(sent, [{ interaction_id: 'i1', event: 'accepted', accepted_chars: 12, shown_ms: 401 }]);
});

test('an acceptance that rewrites the line from its start is still recognised', () => {
  const { t, sent } = tracker();
  t.shown(S, 0);
  t.edited(URI, [{ start: { line: 3, character: 0 }, end: { line: 3, character: 4 }, text: '    return a + b' }], 500);
  t.cursorMoved(URI, { line: 3, character: 16 }, 500);
  t.accepted('i1', S.text, 501);
  assert.equal(sent.length, 1);
  assert.equal(sent[0].event, 'accepted');
});

test('inserted text without the command still counts as accepted, once', () => {
  const { t, sent } = tracker();
  t.shown(S, 0);
  t.edited(URI, insert(3, 4, S.text), 300);
  t.edited(URI, insert(3, 16, '\n'), 900);
  t.accepted('i1', S.text, 950);
  assert.deepEqual(sent.map((p) => p.event), ['accepted']);
});

test('Escape after 250 ms is a dismissal with the time shown', () => {
  const { t, sent } = tracker();
  t.shown(S, 1000);
  t.dismissed(1300);
  assert.deepEqual(sent, [{ interaction_id: 'i1', event: 'dismissed', shown_ms: 300 }]);
});

test('a suggestion shown for under 250 ms does not count', () => {
  const { t, sent } = tracker();
  t.shown(S, 1000);
  t.edited(URI, insert(3, 4, 'x'), 1249);
  assert.equal(sent.length, 0);
  assert.equal(t.pending, undefined);
});

test('typing over a suggestion dismisses it', () => {
  const { t, sent } = tracker();
  t.shown(S, 0);
  t.edited(URI, insert(3, 4, 'y'), 600);
  assert.deepEqual(sent, [{ interaction_id: 'i1', event: 'dismissed', shown_ms: 600 }]);
});

test('moving the cursor away dismisses; the cursor staying put does not', () => {
  const { t, sent } = tracker();
  t.shown(S, 0);
  t.cursorMoved(URI, { line: 3, character: 4 }, 300);
  assert.equal(sent.length, 0);
  t.cursorMoved(URI, { line: 0, character: 0 }, 400);
  assert.deepEqual(sent.map((p) => p.event), ['dismissed']);
});

test('typing the suggestion through, then leaving, is a partial acceptance', () => {
  const { t, sent } = tracker();
  t.shown(S, 0);
  t.edited(URI, insert(3, 4, 'r'), 100);
  t.cursorMoved(URI, { line: 3, character: 5 }, 100);
  t.edited(URI, insert(3, 5, 'eturn'), 200);
  t.cursorMoved(URI, { line: 3, character: 10 }, 200);
  assert.equal(sent.length, 0);
  t.edited(URI, insert(3, 10, 'X'), 300);
  assert.deepEqual(sent, [{ interaction_id: 'i1', event: 'partially_accepted', accepted_chars: 6, shown_ms: 300 }]);
});

test('a new suggestion replaces the one on screen; edits elsewhere are ignored', () => {
  const { t, sent } = tracker();
  t.shown(S, 0);
  t.edited('file:///w/other.py', insert(0, 0, 'zzz'), 100);
  t.shown({ ...S, interactionId: 'i2' }, 500);
  t.shown({ ...S, interactionId: 'i2' }, 600);
  assert.deepEqual(sent, [{ interaction_id: 'i1', event: 'dismissed', shown_ms: 500 }]);
  assert.equal(t.pending, 'i2');
});

test('an acceptance of an untracked suggestion is still reported', () => {
  const { t, sent } = tracker();
  t.accepted('old', 'abc', 5);
  t.accepted('old', 'abc', 6);
  assert.deepEqual(sent, [{ interaction_id: 'old', event: 'accepted', accepted_chars: 3 }]);
});

test('advance moves over lines', () => {
  assert.deepEqual(advance({ line: 2, character: 5 }, 'ab'), { line: 2, character: 7 });
  assert.deepEqual(advance({ line: 2, character: 5 }, 'ab\n  cd'), { line: 3, character: 4 });
});
