// Bundle the extension (Node, CommonJS) and the webview pages (browser) with esbuild.
// `--production` minifies and drops source maps, for the .vsix.
import * as esbuild from 'esbuild';
import { copyFileSync, mkdirSync } from 'fs';
import { dirname, join } from 'path';
import { fileURLToPath } from 'url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const production = process.argv.includes('--production');
const common = { bundle: true, minify: production, sourcemap: !production, logLevel: 'warning', absWorkingDir: root };

await Promise.all([
  esbuild.build({
    ...common,
    entryPoints: ['src/extension.ts'],
    outfile: 'dist/extension.js',
    platform: 'node',
    format: 'cjs',
    target: 'node18',
    external: ['vscode'],
  }),
  esbuild.build({
    ...common,
    entryPoints: { chat: 'src/webview/chat.ts', review: 'src/webview/review.ts' },
    outdir: 'dist/webview',
    platform: 'browser',
    format: 'iife',
    target: 'es2022',
  }),
]);
mkdirSync(join(root, 'dist', 'webview'), { recursive: true });
copyFileSync(join(root, 'media', 'webview.css'), join(root, 'dist', 'webview', 'webview.css'));
