// The connection to the reinf daemon: find it through daemon.json, start it when none answers, connect a
// language client over TCP with the token, and reconnect whenever the connection drops.
import { ChildProcess, spawn } from 'child_process';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import * as vscode from 'vscode';
import {
  CloseAction,
  ErrorAction,
  LanguageClient,
  LanguageClientOptions,
  Middleware,
  ProgressType,
  RevealOutputChannelOn,
  State,
} from 'vscode-languageclient/node';
import { DaemonInfo, parseDaemonInfo, reconnectDelay, resolveHome } from './daemon';
import { errorText } from './format';
import { pidIsReinfDaemon, proveDaemon } from './liveness';

export type ConnectionState =
  | { kind: 'connecting'; message: string }
  | { kind: 'connected'; message: string }
  | { kind: 'disconnected'; message: string };

/** How long a daemon we started may take to answer (the first start may build the test model). */
const START_TIMEOUT_MS = 180_000;
/** After a lost connection, wait this long for the daemon to come back by itself (another window may be
 * starting it) before starting one: a crashed daemon is started again within 10 s of being noticed. */
const RESTART_GRACE_MS = 5_000;
/** After a start that failed, wait this long before trying again ("reinf: Reconnect to Daemon" tries now). */
const RESPAWN_AFTER_FAILURE_MS = 60_000;

export class Daemon implements vscode.Disposable {
  private client: LanguageClient | undefined;
  private state: ConnectionState = { kind: 'connecting', message: 'connecting to the reinf daemon' };
  private readonly stateChanged = new vscode.EventEmitter<ConnectionState>();
  private readonly clientReady = new vscode.EventEmitter<LanguageClient>();
  /** Fires with each new connection state. */
  readonly onState = this.stateChanged.event;
  /** Fires with each new language client, once it has started: register notification handlers there. */
  readonly onClient = this.clientReady.event;

  private disposed = false;
  private wake: (() => void) | undefined;
  private lostAt = 0;
  private spawned: ChildProcess | undefined;
  private spawnFailure: { at: number; message: string } | undefined;

  constructor(
    private readonly out: vscode.LogOutputChannel,
    private readonly middleware: Middleware,
  ) {}

  get current(): ConnectionState {
    return this.state;
  }

  start(): void {
    void this.loop();
  }

  /** Drop the connection (if any) and connect again now, re-reading settings and daemon.json. */
  async reconnect(): Promise<void> {
    const client = this.client;
    this.lostAt = 0;
    this.spawnFailure = undefined;
    if (client) {
      await client.stop().catch(() => undefined);
    }
    this.wake?.();
  }

  async request<R>(method: string, params: object, token?: vscode.CancellationToken): Promise<R> {
    const client = this.connected();
    // Passing `undefined` as the token would make vscode-jsonrpc send [params, null] as positional params.
    return token ? client.sendRequest<R>(method, params, token) : client.sendRequest<R>(method, params);
  }

  notify(method: string, params: object): void {
    const client = this.client;
    if (!client?.isRunning()) {
      this.out.warn(`not connected: ${method} dropped (${this.state.message})`);
      return;
    }
    client.sendNotification(method, params).catch((e: unknown) => this.out.warn(`${method} failed: ${errorText(e)}`));
  }

  /** Listen to `$/progress` for `token` on the current connection. */
  onProgress<P>(token: string, handler: (value: P) => void): vscode.Disposable {
    return this.connected().onProgress(new ProgressType<P>(), token, handler);
  }

  dispose(): void {
    this.disposed = true;
    this.wake?.();
    void this.client?.stop().catch(() => undefined);
    this.stateChanged.dispose();
    this.clientReady.dispose();
  }

  private connected(): LanguageClient {
    const client = this.client;
    if (!client?.isRunning()) {
      throw new Error(`The reinf daemon is not connected: ${this.state.message}. See "reinf: Show Log".`);
    }
    return client;
  }

  private setState(state: ConnectionState): void {
    // While it keeps retrying, the same failure is said once, not every few seconds.
    if (state.kind === this.state.kind && state.message === this.state.message) {
      return;
    }
    this.state = state;
    const log = state.kind === 'disconnected' ? this.out.error : this.out.info;
    log.call(this.out, state.message);
    if (!this.disposed) {
      this.stateChanged.fire(state);
    }
  }

  private async loop(): Promise<void> {
    let attempt = 0;
    while (!this.disposed) {
      try {
        const { socket, info, home } = await this.locate();
        const { closed } = await this.serve(socket, info, home);
        attempt = 0;
        await closed;
        this.client = undefined;
        this.lostAt = Date.now();
        if (!this.disposed) {
          this.setState({ kind: 'disconnected', message: 'the connection to the reinf daemon closed; reconnecting' });
        }
      } catch (e) {
        this.client = undefined;
        if (!this.disposed) {
          this.setState({ kind: 'disconnected', message: `cannot connect to the reinf daemon: ${errorText(e)}` });
        }
      }
      await this.sleep(reconnectDelay(attempt++));
    }
  }

  /** Start a language client on `socket`; resolves once it runs, with a promise of its end. */
  private async serve(socket: net.Socket, info: DaemonInfo, home: string): Promise<{ closed: Promise<void> }> {
    let onClosed: () => void = () => undefined;
    // The client notices the socket closing and calls `closed` below; it then cleans up after itself.
    const closed = new Promise<void>((resolve) => (onClosed = resolve));
    const options: LanguageClientOptions = {
      documentSelector: [{ scheme: 'file' }, { scheme: 'untitled' }],
      initializationOptions: { token: info.token, client: 'vscode' },
      outputChannel: this.out,
      revealOutputChannelOn: RevealOutputChannelOn.Never,
      middleware: this.middleware,
      initializationFailedHandler: () => false,
      errorHandler: {
        error: () => ({ action: ErrorAction.Continue, handled: true }),
        closed: () => {
          onClosed();
          // The client's own restart is off because the loop below reconnects (and restarts the daemon).
          return {
            action: CloseAction.DoNotRestart,
            handled: true,
            message: 'the connection to the reinf daemon closed; reconnecting, and starting it again if it does not come back',
          };
        },
      },
    };
    const client = new LanguageClient('reinf', 'reinf', () => Promise.resolve({ reader: socket, writer: socket }), options);
    client.onDidChangeState((e) => {
      if (e.newState === State.Stopped) {
        onClosed();
      }
    });
    try {
      await client.start();
    } catch (e) {
      socket.destroy();
      await client.dispose().catch(() => undefined);
      throw new Error(`the daemon on port ${info.port} refused the connection: ${errorText(e)}`);
    }
    this.client = client;
    this.setState({ kind: 'connected', message: `connected to the reinf daemon (pid ${info.pid}, port ${info.port}, ${home})` });
    this.clientReady.fire(client);
    return { closed: closed.then(() => void socket.destroy()) };
  }

  /** Find a daemon that answers; start one when none does. */
  private async locate(): Promise<{ socket: net.Socket; info: DaemonInfo; home: string }> {
    const cfg = vscode.workspace.getConfiguration('reinf');
    const home = resolveHome(cfg.get<string>('home', ''), process.env, process.platform, os.homedir());
    const file = path.join(home, 'daemon.json');
    if (this.state.kind !== 'disconnected') {
      this.setState({ kind: 'connecting', message: `connecting to the reinf daemon described in ${file}` });
    }
    const first = await tryConnect(file);
    if ('socket' in first) {
      return { ...first, home };
    }
    if (Date.now() - this.lostAt < RESTART_GRACE_MS) {
      throw new Error(first.why);
    }
    const command = cfg.get<string>('serverCommand', 'reinf serve').trim();
    if (!command) {
      throw new Error(`${first.why}, and reinf.serverCommand is empty, so none is started. Run 'reinf serve'.`);
    }
    if (this.spawnFailure && Date.now() - this.spawnFailure.at < RESPAWN_AFTER_FAILURE_MS) {
      throw new Error(this.spawnFailure.message);
    }
    this.out.info(`no daemon answers (${first.why})`);
    try {
      return { ...(await this.startAndWait(command, home, file)), home };
    } catch (e) {
      this.spawnFailure = { at: Date.now(), message: errorText(e) };
      throw e;
    }
  }

  private async startAndWait(command: string, home: string, file: string): Promise<{ socket: net.Socket; info: DaemonInfo }> {
    const child = this.startDaemon(command, home);
    const deadline = Date.now() + START_TIMEOUT_MS;
    let last = '';
    while (Date.now() < deadline && !this.disposed) {
      await delay(500);
      // Exit code 3: another daemon has this home (another window or the notebook started it at the same
      // moment); it answers through daemon.json like any other.
      if ((child.exitCode !== null && child.exitCode !== ALREADY_RUNNING) || child.signalCode !== null) {
        throw new Error(
          `'${command}' exited (${child.exitCode ?? child.signalCode}) before the daemon answered. ` +
            `Its output is in ${serveLog(home)}:\n${tail(serveLog(home))}`,
        );
      }
      const next = await tryConnect(file);
      if ('socket' in next) {
        return next;
      }
      last = next.why;
    }
    throw new Error(`the daemon started with '${command}' did not answer within ${START_TIMEOUT_MS / 1000} s (${last})`);
  }

  private startDaemon(command: string, home: string): ChildProcess {
    if (this.spawned && this.spawned.exitCode === null && this.spawned.signalCode === null) {
      return this.spawned;
    }
    fs.mkdirSync(home, { recursive: true, mode: 0o700 });
    const log = fs.openSync(serveLog(home), 'a', 0o600);
    this.setState({ kind: 'connecting', message: `starting the reinf daemon: ${command} (REINF_HOME=${home})` });
    try {
      // Detached, with its output in a file: the daemon serves every window and outlives this one.
      const child = spawn(command, {
        shell: true,
        detached: true,
        stdio: ['ignore', log, log],
        env: { ...process.env, REINF_HOME: home },
      });
      child.on('error', (e) => this.out.error(`could not run '${command}': ${e.message}`));
      child.unref();
      this.spawned = child;
      return child;
    } finally {
      fs.closeSync(log);
    }
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.wake = done;
    });
  }
}

/** `reinf serve`'s exit code when another daemon serves (or is starting for) the same REINF_HOME. */
const ALREADY_RUNNING = 3;

function serveLog(home: string): string {
  return path.join(home, 'vscode-serve.log');
}

/** Read daemon.json and open a TCP connection to the port it names. */
async function tryConnect(file: string): Promise<{ socket: net.Socket; info: DaemonInfo } | { why: string }> {
  let text: string;
  try {
    text = await fs.promises.readFile(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    return { why: code === 'ENOENT' ? `${file} does not exist` : `cannot read ${file}: ${errorText(e)}` };
  }
  let info: DaemonInfo;
  try {
    info = parseDaemonInfo(text, file);
  } catch (e) {
    return { why: errorText(e) };
  }
  // A daemon.json left by a daemon that died (kill -9) names a port that anyone may hold now.
  if (!pidIsReinfDaemon(info.pid)) {
    return { why: `${file} names pid ${info.pid}, which is not a running reinf daemon` };
  }
  let socket: net.Socket;
  try {
    socket = await openSocket(info.port);
  } catch (e) {
    return { why: `nothing answers on 127.0.0.1:${info.port} (${errorText(e)})` };
  }
  try {
    await proveDaemon(socket, info.token); // before the token goes out in initialize
  } catch (e) {
    socket.destroy();
    return { why: `what listens on 127.0.0.1:${info.port} is not the reinf daemon: ${errorText(e)}; the token was not sent` };
  }
  return { socket, info };
}

function openSocket(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.setTimeout(3000, () => socket.destroy(new Error('timed out')));
    socket.once('connect', () => {
      socket.setTimeout(0);
      resolve(socket);
    });
    socket.once('error', reject);
  });
}

function tail(file: string, lines = 20): string {
  try {
    return fs.readFileSync(file, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no output)';
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
