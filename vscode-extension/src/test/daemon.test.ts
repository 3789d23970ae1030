import assert from 'node:assert/strict';
import { test } from 'node:test';
import { parseDaemonInfo, reconnectDelay, resolveHome } from '../daemon';

test('home: the setting wins over REINF_HOME, and ~ expands', () => {
  assert.equal(resolveHome('~/rh', { REINF_HOME: '/env' }, 'linux', '/home/u'), '/home/u/rh');
  assert.equal(resolveHome('  ', { REINF_HOME: '/env' }, 'linux', '/home/u'), '/env');
});

test('home: platform defaults match platformdirs user_data_dir("reinf")', () => {
  assert.equal(resolveHome('', {}, 'linux', '/home/u'), '/home/u/.local/share/reinf');
  assert.equal(resolveHome('', { XDG_DATA_HOME: '/xdg' }, 'linux', '/home/u'), '/xdg/reinf');
  assert.equal(resolveHome('', { XDG_DATA_HOME: 'relative' }, 'linux', '/home/u'), '/home/u/.local/share/reinf');
  assert.equal(resolveHome('', {}, 'darwin', '/Users/u'), '/Users/u/Library/Application Support/reinf');
  assert.equal(resolveHome('', { LOCALAPPDATA: 'C:\\Users\\u\\AppData\\Local' }, 'win32', 'C:\\Users\\u'), 'C:\\Users\\u\\AppData\\Local\\reinf');
});

test('daemon.json: a good file parses', () => {
  assert.deepEqual(parseDaemonInfo('{"port": 4321, "token": "t0k", "pid": 7}', 'd.json'), { port: 4321, token: 't0k', pid: 7 });
});

test('daemon.json: errors name the field that is wrong', () => {
  assert.throws(() => parseDaemonInfo('{', 'd.json'), /d\.json is not valid JSON/);
  assert.throws(() => parseDaemonInfo('[]', 'd.json'), /"port" must be an integer/);
  assert.throws(() => parseDaemonInfo('{"port": "80", "token": "x"}', 'd.json'), /"port" must be an integer 1-65535, got "80"/);
  assert.throws(() => parseDaemonInfo('{"port": 70000, "token": "x"}', 'd.json'), /"port"/);
  assert.throws(() => parseDaemonInfo('{"port": 80, "token": ""}', 'd.json'), /"token" must be a non-empty string/);
});

test('reconnect back-off doubles from half a second and stops at the cap', () => {
  assert.deepEqual([0, 1, 2, 3, 4, 10].map((a) => reconnectDelay(a)), [500, 1000, 2000, 4000, 5000, 5000]);
});
