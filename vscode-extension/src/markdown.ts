// Markdown for chat answers, rendered in the extension host so the webview only places trusted HTML.
// Raw HTML in the model's output is escaped, images are not rendered (no remote content), and every code
// block gets Copy and Insert buttons that the webview wires up.
import MarkdownIt from 'markdown-it';

const md = new MarkdownIt({ html: false, linkify: false, typographer: false });
md.disable('image');

function codeBlock(code: string, lang: string): string {
  const cls = lang ? ` class="language-${md.utils.escapeHtml(lang)}"` : '';
  return (
    '<div class="code-block"><div class="code-actions">' +
    '<button type="button" class="code-copy" title="Copy to the clipboard">Copy</button>' +
    '<button type="button" class="code-insert" title="Insert at the cursor in the editor">Insert</button>' +
    `</div><pre><code${cls}>${md.utils.escapeHtml(code)}</code></pre></div>\n`
  );
}

md.renderer.rules.fence = (tokens, idx) => {
  const token = tokens[idx];
  const lang = token.info.trim().split(/\s+/)[0] ?? '';
  return codeBlock(token.content, lang);
};
md.renderer.rules.code_block = (tokens, idx) => codeBlock(tokens[idx].content, '');

/** HTML for a (possibly still streaming) Markdown answer. */
export function renderMarkdown(text: string): string {
  return md.render(text);
}
