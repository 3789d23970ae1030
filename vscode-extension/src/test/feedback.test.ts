import assert from 'node:assert/strict';
import { test } from 'node:test';
import { advance, countWords, FeedbackTracker, Suggestion } from '../feedback';
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
  // Shown until it went in (400), not until the command came.
  assert.deepEqual(sent, [{ interaction_id: 'i1', event: 'accepted', accepted_chars: 12, accepted_words: 3, shown_ms: 400 }]);
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

function typeChars(t: FeedbackTracker, line: number, from: number, text: string, now: number): void {
  for (let i = 0; i < text.length; i++) {
    t.edited(URI, insert(line, from + i, text[i]), now);
    t.cursorMoved(URI, { line, character: from + i + 1 }, now);
  }
}

test('typing the suggestion through by hand, then leaving, is "typed_through" with the characters typed', () => {
  const { t, sent } = tracker();
  t.shown(S, 0);
  typeChars(t, 3, 4, 'return', 200);
  assert.equal(sent.length, 0);
  t.edited(URI, insert(3, 10, 'X'), 300);
  assert.deepEqual(sent, [{ interaction_id: 'i1', event: 'typed_through', typed_chars: 6, shown_ms: 300 }]);
});

test('accept-word inserts are a partial acceptance, in characters and words', () => {
  const { t, sent } = tracker();
  t.shown(S, 0);
  t.edited(URI, insert(3, 4, 'return '), 100); // editor.action.inlineSuggest.acceptNextWord
  t.cursorMoved(URI, { line: 3, character: 11 }, 100);
  typeChars(t, 3, 11, 'a', 150);
  t.edited(URI, insert(3, 12, ' + '), 200);
  t.cursorMoved(URI, { line: 3, character: 15 }, 200);
  t.dismissed(400);
  assert.deepEqual(sent, [
    { interaction_id: 'i1', event: 'partially_accepted', accepted_chars: 10, accepted_words: 1, typed_chars: 1, shown_ms: 400 },
  ]);
});

test('typed to its very end, the suggestion stops counting as shown', () => {
  const { t, sent } = tracker();
  t.shown({ ...S, text: 'ab' }, 0);
  typeChars(t, 3, 4, 'ab', 300);
  t.edited(URI, insert(3, 6, '\n'), 5000);
  assert.deepEqual(sent, [{ interaction_id: 'i1', event: 'typed_through', typed_chars: 2, shown_ms: 300 }]);
});

test('time away from the editor (another window, the chat panel) is not time shown', () => {
  const { t, sent } = tracker();
  t.shown(S, 0);
  t.focusChanged(false, 400);
  t.focusChanged(true, 15_400);
  t.dismissed(15_600);
  assert.deepEqual(sent, [{ interaction_id: 'i1', event: 'dismissed', shown_ms: 600 }]);
});

test('a suggestion that arrives while the editor is not focused starts its clock on the focus', () => {
  const { t, sent } = tracker();
  t.focusChanged(false, 0);
  t.shown(S, 100);
  t.focusChanged(true, 10_000);
  t.dismissed(10_200);
  assert.equal(sent.length, 0); // 200 ms focused: a flicker
});

test('the suggest widget inserting the entry the suggestion extends keeps it alive; Tab then accepts it', () => {
  // "ret" typed, the widget's "return" selected; the suggestion is "return a + b" over the same range.
  const { t, sent } = tracker();
  t.shown({ ...S, text: 'urn a + b', at: { line: 3, character: 7 }, before: 'ret' }, 0);
  t.edited(URI, [{ start: { line: 3, character: 4 }, end: { line: 3, character: 7 }, text: 'return' }], 300);
  t.cursorMoved(URI, { line: 3, character: 10 }, 300);
  assert.equal(sent.length, 0);
  assert.equal(t.pending, 'i1');
  t.edited(URI, insert(3, 10, ' a + b'), 500);
  t.accepted('i1', 'return a + b', 501);
  assert.deepEqual(sent.map((p) => p.event), ['accepted']);
});

test('a backspace inside what was typed of the suggestion keeps it alive', () => {
  const { t, sent } = tracker();
  t.shown(S, 0);
  typeChars(t, 3, 4, 'ret', 100);
  t.edited(URI, [{ start: { line: 3, character: 6 }, end: { line: 3, character: 7 }, text: '' }], 200);
  t.cursorMoved(URI, { line: 3, character: 6 }, 200);
  assert.equal(sent.length, 0);
  t.edited(URI, insert(3, 6, 'x'), 400);
  assert.deepEqual(sent, [{ interaction_id: 'i1', event: 'typed_through', typed_chars: 2, shown_ms: 400 }]);
});

test('words are counted as accept-word steps over them', () => {
  assert.equal(countWords('return a + b'), 3);
  assert.equal(countWords('  self._name)'), 2);
  assert.equal(countWords(''), 0);
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
  assert.deepEqual(sent, [{ interaction_id: 'old', event: 'accepted', accepted_chars: 3, accepted_words: 1 }]);
});

test('advance moves over lines', () => {
  assert.deepEqual(advance({ line: 2, character: 5 }, 'ab'), { line: 2, character: 7 });
  assert.deepEqual(advance({ line: 2, character: 5 }, 'ab\n  cd'), { line: 3, character: 4 });
});
