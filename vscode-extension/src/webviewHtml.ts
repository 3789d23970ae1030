// The HTML shell of reinf's webviews: a strict Content Security Policy, one stylesheet and one script, both
// from the extension's own files, the script allowed by a fresh nonce. Pure, unit-tested.
import { randomBytes } from 'crypto';

export function makeNonce(): string {
  return randomBytes(18).toString('base64').replace(/[^A-Za-z0-9]/g, '');
}

export function contentSecurityPolicy(cspSource: string, nonce: string): string {
  return [
    "default-src 'none'",
    `style-src ${cspSource}`,
    `font-src ${cspSource}`,
    `img-src ${cspSource} data:`,
    `script-src 'nonce-${nonce}'`,
    "connect-src 'none'",
    "frame-src 'none'",
    "form-action 'none'",
    "base-uri 'none'",
  ].join('; ');
}

export interface ShellParts {
  title: string;
  cspSource: string;
  nonce: string;
  styleUri: string;
  scriptUri: string;
  body: string;
}

export function webviewHtml(p: ShellParts): string {
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<meta http-equiv="Content-Security-Policy" content="${contentSecurityPolicy(p.cspSource, p.nonce)}">
<meta name="viewport" content="width=device-width, initial-scale=1.0">
<link rel="stylesheet" href="${p.styleUri}">
<title>${p.title}</title>
</head>
<body>
${p.body}
<script nonce="${p.nonce}" src="${p.scriptUri}"></script>
</body>
</html>`;
}
