import assert from 'node:assert/strict';
import * as net from 'node:net';
import { test } from 'node:test';
import { challengeProof, isReinfCommandLine, pidIsReinfDaemon, proveDaemon, readFrame } from '../liveness';

test('the proof is the one the daemon computes (reinf.liveness.challenge_proof)', () => {
  assert.equal(
    challengeProof('tok-123', 'nonce-0123456789abcdef'),
    '8c0e2f7b0607bc985c74f373f0e5a8735499fbb8eb660d3d84c3a06d8bf1ffcb',
  );
});

test('a reinf daemon is told from other processes by its command line', () => {
  assert.ok(isReinfCommandLine(['/usr/bin/python3', '-m', 'reinf', 'serve', '']));
  assert.ok(isReinfCommandLine(['/usr/bin/python3', '/home/u/.local/bin/reinf', 'serve']));
  assert.ok(!isReinfCommandLine(['/usr/bin/python3', '-m', 'http.server', '8000']));
  assert.ok(!isReinfCommandLine(['/usr/bin/python3', '-m', 'reinf', 'status']));
  assert.ok(!pidIsReinfDaemon(process.pid)); // alive and ours, but node, not reinf serve
  assert.ok(!pidIsReinfDaemon(0) && !pidIsReinfDaemon(2 ** 22 + 1));
});

test('a frame is read whole, with what follows it kept', () => {
  assert.equal(readFrame(Buffer.from('Content-Length: 2\r\n\r\n{')), undefined);
  const frame = readFrame(Buffer.from('Content-Length: 2\r\n\r\n{}rest'));
  assert.deepEqual(frame?.message, {});
  assert.equal(frame?.rest.toString(), 'rest');
});

/** A server that answers the challenge with `answer(nonce)` and records what it receives. */
async function listener(answer: (nonce: string) => unknown): Promise<{ port: number; received: () => string; close: () => void }> {
  let received = '';
  const server = net.createServer((sock) => {
    sock.on('data', (chunk) => {
      received += chunk.toString();
      const frame = readFrame(Buffer.from(received));
      const nonce = (frame?.message as { params?: { nonce?: string } } | undefined)?.params?.nonce;
      if (nonce && !received.includes('initialize')) {
        const body = JSON.stringify({ jsonrpc: '2.0', id: 'reinf-challenge', result: answer(nonce) });
        sock.write(`Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  return { port, received: () => received, close: () => server.close() };
}

function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.0.1', port }, () => resolve(s));
    s.once('error', reject);
  });
}

test('an impostor that cannot prove the token is refused before the token is sent', async () => {
  const token = 'the-token-kkkkkkkkkkkkkkkkkkkk';
  const impostor = await listener(() => ({ proof: 'f'.repeat(64) }));
  const socket = await connect(impostor.port);
  await assert.rejects(proveDaemon(socket, token), /could not prove that it knows the token/);
  socket.destroy();
  assert.ok(impostor.received().includes('reinf/challenge') && !impostor.received().includes(token));
  impostor.close();
});

test('a server that knows the token passes', async () => {
  const token = 'the-token-kkkkkkkkkkkkkkkkkkkk';
  const daemon = await listener((nonce) => ({ proof: challengeProof(token, nonce) }));
  const socket = await connect(daemon.port);
  await proveDaemon(socket, token);
  socket.destroy();
  daemon.close();
});

test('a silent listener times out', async () => {
  const silent = net.createServer(() => undefined);
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  const socket = await connect((silent.address() as net.AddressInfo).port);
  await assert.rejects(proveDaemon(socket, 'x', 200), /did not answer the challenge/);
  socket.destroy();
  silent.close();
});
