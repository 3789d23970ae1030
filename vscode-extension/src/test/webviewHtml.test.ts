import assert from 'node:assert/strict';
import { test } from 'node:test';
import { contentSecurityPolicy, makeNonce, webviewHtml } from '../webviewHtml';

test('the CSP allows nothing but our own files and the nonce', () => {
  const csp = contentSecurityPolicy('https://x.vscode-cdn.net', 'abc123');
  assert.match(csp, /^default-src 'none'/);
  assert.match(csp, /script-src 'nonce-abc123'/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval|\*/);
});

test('the page carries the CSP and a nonce on its only script', () => {
  const nonce = makeNonce();
  assert.match(nonce, /^[A-Za-z0-9]{16,}$/);
  assert.notEqual(nonce, makeNonce());
  const html = webviewHtml({ title: 't', cspSource: 'vscode-resource:', nonce, styleUri: 's.css', scriptUri: 'c.js', body: '<p>hi</p>' });
  assert.match(html, /<meta http-equiv="Content-Security-Policy"/);
  const scripts = html.match(/<script[^>]*>/g) ?? [];
  assert.deepEqual(scripts, [`<script nonce="${nonce}" src="c.js">`]);
});
