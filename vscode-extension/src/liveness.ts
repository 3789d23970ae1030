// Is the daemon that daemon.json names really there? The same checks as the Python client (reinf/liveness.py):
// its pid alive, ours and running `reinf serve`, and whatever listens on its port able to prove it knows the
// token (an HMAC of our nonce) before we send the token. No vscode import, unit-tested.
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as net from 'net';

const PROOF_CONTEXT = 'reinf daemon proof:';

/** HMAC-SHA256 of `nonce` under the token, hex; only a holder of the token can compute it. */
export function challengeProof(token: string, nonce: string): string {
  return crypto.createHmac('sha256', token).update(PROOF_CONTEXT + nonce).digest('hex');
}

/** Whether a process's argv (from /proc/<pid>/cmdline) is `reinf serve`. */
export function isReinfCommandLine(argv: string[]): boolean {
  return argv.includes('serve') && argv.some((a) => a === 'reinf' || a.endsWith('/reinf') || a.endsWith('reinf.__main__'));
}

/** Whether `pid` is a live process of this user that runs `reinf serve` (on Linux, read from /proc; elsewhere,
 * that it is alive and ours). A pid in a stale daemon.json may be dead, or reused by something else. */
export function pidIsReinfDaemon(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) {
    return false;
  }
  try {
    process.kill(pid, 0);
  } catch {
    return false; // ESRCH: gone; EPERM: another user's
  }
  if (process.platform !== 'linux') {
    return true;
  }
  try {
    const uid = process.getuid?.();
    if (uid !== undefined && fs.statSync(`/proc/${pid}`).uid !== uid) {
      return false;
    }
    return isReinfCommandLine(fs.readFileSync(`/proc/${pid}/cmdline`, 'latin1').split('\0'));
  } catch {
    return false;
  }
}

/** The first framed message in `buf`, and what follows it; undefined while it is incomplete. */
export function readFrame(buf: Buffer): { message: unknown; rest: Buffer } | undefined {
  const end = buf.indexOf('\r\n\r\n');
  if (end < 0) {
    if (buf.length > 4096) {
      throw new Error('the header is too long');
    }
    return undefined;
  }
  const match = /content-length:\s*(\d+)/i.exec(buf.subarray(0, end).toString('latin1'));
  if (!match) {
    throw new Error('no Content-Length');
  }
  const length = Number(match[1]);
  if (length > 65536) {
    throw new Error('the answer is too long');
  }
  const start = end + 4;
  if (buf.length < start + length) {
    return undefined;
  }
  return { message: JSON.parse(buf.subarray(start, start + length).toString('utf8')), rest: buf.subarray(start + length) };
}

/** Ask the server on `socket` to prove it knows `token`, before anything else is sent on it; rejects when
 * it cannot, and then the token must not be sent. */
export function proveDaemon(socket: net.Socket, token: string, timeoutMs = 10_000): Promise<void> {
  const nonce = crypto.randomBytes(24).toString('base64url');
  const body = JSON.stringify({ jsonrpc: '2.0', id: 'reinf-challenge', method: 'reinf/challenge', params: { nonce } });
  return new Promise((resolve, reject) => {
    let buf = Buffer.alloc(0);
    const finish = (err?: Error): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('error', finish);
      socket.off('close', onClose);
      if (err) {
        reject(err);
      } else {
        resolve();
      }
    };
    const onClose = (): void => finish(new Error('it closed the connection without answering the challenge'));
    const onData = (chunk: Buffer): void => {
      buf = Buffer.concat([buf, chunk]);
      let frame;
      try {
        frame = readFrame(buf);
      } catch (e) {
        finish(new Error(`its answer to the challenge is not valid (${(e as Error).message})`));
        return;
      }
      if (!frame) {
        return;
      }
      const result = (frame.message as { result?: { proof?: unknown } } | null)?.result;
      const proof = typeof result?.proof === 'string' ? Buffer.from(result.proof) : Buffer.alloc(0);
      const expected = Buffer.from(challengeProof(token, nonce));
      if (proof.length === expected.length && crypto.timingSafeEqual(proof, expected)) {
        finish();
      } else {
        finish(new Error('it could not prove that it knows the token'));
      }
    };
    const timer = setTimeout(() => finish(new Error('it did not answer the challenge')), timeoutMs);
    socket.on('data', onData);
    socket.once('error', finish);
    socket.once('close', onClose);
    socket.write(`Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
  });
}
