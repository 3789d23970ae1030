// The chat panel's page. It draws what the extension sends and posts the user's actions back.
import type { FromChat, ToChat } from '../messages';
import { byId, el, post, ratingWidget, showRatingReply } from './common';

const log = byId<HTMLDivElement>('log');
const form = byId<HTMLFormElement>('ask-form');
const prompt = byId<HTMLTextAreaElement>('prompt');
const include = byId<HTMLSelectElement>('include');
const send = byId<HTMLButtonElement>('send');
const stop = byId<HTMLButtonElement>('stop');
const connection = byId<HTMLDivElement>('connection');

const say = (m: FromChat) => post(m);

function setBusy(busy: boolean): void {
  send.disabled = busy;
  stop.hidden = !busy;
}

function answerOf(turn: number): HTMLElement | null {
  return log.querySelector<HTMLElement>(`.turn[data-turn="${turn}"] .answer`);
}

/** The turn's answer stopped streaming, as `state`; the panel takes questions again. */
function finish(turn: number, state: 'done' | 'failed'): HTMLElement | null {
  setBusy(false);
  const answer = answerOf(turn);
  answer?.classList.replace('streaming', state);
  return answer;
}

form.addEventListener('submit', (e) => {
  e.preventDefault();
  const text = prompt.value.trim();
  if (!text || send.disabled) {
    return;
  }
  say({ type: 'ask', text, include: include.value as 'none' | 'selection' | 'file' });
  prompt.value = '';
  setBusy(true);
});
prompt.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
    e.preventDefault();
    form.requestSubmit();
  }
});
stop.addEventListener('click', () => say({ type: 'stop' }));
byId('new').addEventListener('click', () => say({ type: 'newChat' }));

// Copy and Insert buttons on code blocks: the extension does the clipboard and the editor.
log.addEventListener('click', (e) => {
  const button = (e.target as HTMLElement).closest('button');
  const code = button?.closest('.code-block')?.querySelector('code')?.textContent;
  if (code == null || !button) {
    return;
  }
  if (button.classList.contains('code-copy')) {
    say({ type: 'copy', code });
  } else if (button.classList.contains('code-insert')) {
    say({ type: 'insert', code });
  }
});

window.addEventListener('message', (event: MessageEvent<ToChat>) => {
  const m = event.data;
  switch (m.type) {
    case 'connection':
      connection.textContent = m.connected ? '' : `Not connected. ${m.text}`;
      connection.hidden = m.connected;
      return;
    case 'user': {
      log.querySelector('.empty')?.remove();
      const turn = el('section', { class: 'turn', 'data-turn': String(m.turn) });
      const user = el('div', { class: 'user' });
      user.append(el('div', { class: 'who' }, 'You'), el('div', { class: 'content' }, m.content));
      if (m.context) {
        const sent = el('details', { class: 'sent' });
        sent.append(el('summary', {}, m.context.label));
        if (m.context.text) {
          sent.append(el('pre', {}, m.context.text));
        }
        user.append(sent);
      }
      const answer = el('div', { class: 'answer streaming' });
      answer.append(el('div', { class: 'who' }, 'reinf'), el('div', { class: 'md' }, '…'));
      turn.append(user, answer);
      log.append(turn);
      turn.scrollIntoView({ block: 'end' });
      return;
    }
    case 'delta': {
      const answer = answerOf(m.turn);
      const md = answer?.querySelector('.md');
      if (answer && md) {
        md.innerHTML = m.html; // rendered by the extension from Markdown with raw HTML escaped
        answer.dataset.deltas = String(Number(answer.dataset.deltas ?? 0) + 1);
      }
      return;
    }
    case 'done': {
      const answer = finish(m.turn, 'done');
      if (answer) {
        answer.setAttribute('data-interaction', m.interactionId);
        answer.querySelector('.md')!.innerHTML = m.html;
        answer.append(el('div', { class: 'meta' }, m.meta), ratingWidget(m.interactionId));
        answer.scrollIntoView({ block: 'end' });
      }
      return;
    }
    case 'error':
      finish(m.turn, 'failed')?.append(el('div', { class: 'error', role: 'alert' }, m.message));
      return;
    case 'rated':
    case 'rateError':
      showRatingReply(m);
      return;
    case 'cleared':
      log.replaceChildren(el('p', { class: 'empty' }, 'New conversation.'));
      setBusy(false);
      return;
  }
});

// While the panel has the focus, the editor's ghost text is not being looked at: the extension stops its clock.
window.addEventListener('focus', () => say({ type: 'focus', focused: true }));
window.addEventListener('blur', () => say({ type: 'focus', focused: false }));
say({ type: 'ready' });
