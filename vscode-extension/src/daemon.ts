// Where the daemon is: REINF_HOME and daemon.json. Pure functions, no vscode import, unit-tested.
import * as path from 'path';

export interface DaemonInfo {
  port: number;
  token: string;
  pid: number;
}

/**
 * The folder the daemon uses, as `reinf.paths.reinf_home` computes it: the setting, else `$REINF_HOME`,
 * else platformdirs' user data folder for "reinf".
 */
export function resolveHome(
  setting: string,
  env: Record<string, string | undefined>,
  platform: string,
  homedir: string,
): string {
  const chosen = setting.trim() || env.REINF_HOME || '';
  if (chosen) {
    return expandUser(chosen, homedir);
  }
  if (platform === 'win32') {
    return path.win32.join(env.LOCALAPPDATA || path.win32.join(homedir, 'AppData', 'Local'), 'reinf');
  }
  if (platform === 'darwin') {
    return path.posix.join(homedir, 'Library', 'Application Support', 'reinf');
  }
  const xdg = env.XDG_DATA_HOME && path.isAbsolute(env.XDG_DATA_HOME) ? env.XDG_DATA_HOME : '';
  return path.join(xdg || path.join(homedir, '.local', 'share'), 'reinf');
}

function expandUser(p: string, homedir: string): string {
  if (p === '~') {
    return homedir;
  }
  if (p.startsWith('~/') || p.startsWith('~\\')) {
    return path.join(homedir, p.slice(2));
  }
  return p;
}

/** Parse daemon.json; the error names the field that is wrong. */
export function parseDaemonInfo(text: string, file: string): DaemonInfo {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch (e) {
    throw new Error(`${file} is not valid JSON (${(e as Error).message}); restart the daemon with 'reinf serve'`);
  }
  if (typeof data !== 'object' || data === null) {
    throw new Error(`${file} must hold a JSON object with port, token and pid`);
  }
  const obj = data as Record<string, unknown>;
  const port = obj.port;
  if (typeof port !== 'number' || !Number.isInteger(port) || port <= 0 || port > 65535) {
    throw new Error(`${file}: "port" must be an integer 1-65535, got ${JSON.stringify(port)}`);
  }
  if (typeof obj.token !== 'string' || obj.token === '') {
    throw new Error(`${file}: "token" must be a non-empty string`);
  }
  const pid = typeof obj.pid === 'number' && Number.isInteger(obj.pid) ? obj.pid : 0;
  return { port, token: obj.token, pid };
}

/** Seconds-scale back-off between reconnect attempts: 0.5 s doubling up to `maxMs`. */
export function reconnectDelay(attempt: number, maxMs = 5000): number {
  return Math.min(maxMs, 500 * 2 ** Math.max(0, attempt));
}
