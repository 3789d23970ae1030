import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Cancellable, debounce, languageEnabled } from '../gate';

test('per-language switch: own entry, else "*", else on', () => {
  const map = { '*': false, python: true, markdown: false };
  assert.equal(languageEnabled(map, 'python'), true);
  assert.equal(languageEnabled(map, 'markdown'), false);
  assert.equal(languageEnabled(map, 'rust'), false);
  assert.equal(languageEnabled({ python: false }, 'rust'), true);
  assert.equal(languageEnabled(undefined, 'rust'), true);
  assert.equal(languageEnabled({ rust: 'yes' }, 'rust'), true);
});

class Token implements Cancellable {
  isCancellationRequested = false;
  private listeners: (() => unknown)[] = [];
  onCancellationRequested(listener: () => unknown) {
    this.listeners.push(listener);
    return { dispose: () => (this.listeners = this.listeners.filter((l) => l !== listener)) };
  }
  cancel(): void {
    this.isCancellationRequested = true;
    this.listeners.forEach((l) => l());
  }
}

test('debounce lets the request go when nothing cancels it', async () => {
  assert.equal(await debounce(5, new Token()), true);
  assert.equal(await debounce(0, new Token()), true);
});

test('debounce drops a request made stale by a newer keystroke', async () => {
  const token = new Token();
  const waiting = debounce(10_000, token);
  token.cancel();
  assert.equal(await waiting, false);
  assert.equal(await debounce(5, token), false);
});
