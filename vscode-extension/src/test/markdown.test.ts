import assert from 'node:assert/strict';
import { test } from 'node:test';
import { renderMarkdown } from '../markdown';

test('code blocks get Copy and Insert buttons and keep their text escaped', () => {
  const html = renderMarkdown('Try:\n\n```python\nif a < b:\n    print("<b>")\n```\n');
  assert.match(html, /<div class="code-block">/);
  assert.match(html, /class="code-copy"/);
  assert.match(html, /class="code-insert"/);
  assert.match(html, /<code class="language-python">if a &lt; b:\n    print\(&quot;&lt;b&gt;&quot;\)\n<\/code>/);
});

test('raw HTML from the model is shown as text, never run', () => {
  const html = renderMarkdown('<script>alert(1)</script> <img src=x onerror=alert(1)>');
  assert.doesNotMatch(html, /<script|<img/);
  assert.match(html, /&lt;script&gt;/);
});

test('images are not loaded: no remote content', () => {
  assert.doesNotMatch(renderMarkdown('![x](https://example.com/a.png)'), /<img/);
});

test('an unfinished stream still renders', () => {
  assert.match(renderMarkdown('```py\ndef f('), /<code class="language-py">def f\(\n?<\/code>/);
});
