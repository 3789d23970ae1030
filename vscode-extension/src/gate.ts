// When to ask the daemon for an inline completion: the per-language switch and the debounce. Pure logic.

/** Per-language switch, as in `reinf.inlineCompletions.languages`: the language's own entry, else "*", else on. */
export function languageEnabled(map: Record<string, unknown> | undefined, languageId: string): boolean {
  const own = map?.[languageId];
  if (typeof own === 'boolean') {
    return own;
  }
  const star = map?.['*'];
  return typeof star === 'boolean' ? star : true;
}

/** The part of a cancellation token this module needs (vscode's CancellationToken has it). */
export interface Cancellable {
  readonly isCancellationRequested: boolean;
  onCancellationRequested(listener: () => unknown): { dispose(): unknown };
}

/**
 * Wait `ms`, unless `token` is cancelled first. True when the wait ran out, so the request may go; false when
 * a newer keystroke made it stale.
 */
export function debounce(ms: number, token: Cancellable): Promise<boolean> {
  if (token.isCancellationRequested) {
    return Promise.resolve(false);
  }
  if (ms <= 0) {
    return Promise.resolve(true);
  }
  return new Promise((resolve) => {
    const sub = token.onCancellationRequested(() => {
      clearTimeout(timer);
      sub.dispose();
      resolve(false);
    });
    const timer = setTimeout(() => {
      sub.dispose();
      resolve(!token.isCancellationRequested);
    }, ms);
  });
}
