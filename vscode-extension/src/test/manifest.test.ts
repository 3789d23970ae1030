// The contributions in package.json that the issue asks for.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';

const manifest = JSON.parse(readFileSync(join(__dirname, '..', '..', 'package.json'), 'utf8'));
const contributes = manifest.contributes;

test('palette commands are titled "reinf: …"', () => {
  const titles = (contributes.commands as { command: string; title: string; category: string }[])
    .filter((c) => !c.title.includes('internal'))
    .map((c) => `${c.category}: ${c.title}`);
  for (const t of ['Retrain Now', 'Retrain with a Fresh Judge', 'Cancel Training', 'Show Status', 'Export Data', 'Show Log', 'Rollback Adapter', 'Open Review Queue']) {
    assert.ok(titles.includes(`reinf: ${t}`), `missing "reinf: ${t}"`);
  }
  const hidden = (contributes.menus.commandPalette as { command: string; when: string }[]).filter((m) => m.when === 'false');
  assert.deepEqual(hidden.map((m) => m.command).sort(), ['reinf.accepted', 'reinf.dismissInline']);
});

test('every setting has a description', () => {
  const props = contributes.configuration.properties as Record<string, { description?: string; markdownDescription?: string }>;
  for (const key of ['reinf.home', 'reinf.serverCommand', 'reinf.inlineCompletions.enabled', 'reinf.inlineCompletions.languages', 'reinf.inlineCompletions.debounceMs', 'reinf.chat.maxTokens']) {
    assert.ok(props[key], `missing setting ${key}`);
    assert.ok((props[key].description ?? props[key].markdownDescription ?? '').length > 20, `${key} needs a description`);
  }
  const debounce = (props['reinf.inlineCompletions.debounceMs'] as { default: number }).default;
  assert.ok(debounce >= 150 && debounce <= 300);
});

test('the chat is a webview view in its own activity-bar container', () => {
  assert.equal(contributes.viewsContainers.activitybar[0].id, 'reinf');
  assert.deepEqual(contributes.views.reinf[0], { type: 'webview', id: 'reinf.chat', name: 'Chat' });
});
