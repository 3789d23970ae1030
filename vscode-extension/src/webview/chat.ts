// The chat panel's page. It draws what the extension sends and posts the user's actions back.
import type { FromChat, SentContext, ToChat } from '../messages';
import { byId, el, post, ratingWidget, showRatingReply, showUntil } from './common';

const log = byId<HTMLDivElement>('log');
const form = byId<HTMLFormElement>('ask-form');
const prompt = byId<HTMLTextAreaElement>('prompt');
const include = byId<HTMLSelectElement>('include');
const send = byId<HTMLButtonElement>('send');
const stop = byId<HTMLButtonElement>('stop');
const connection = byId<HTMLDivElement>('connection');

const say = (m: FromChat) => post(m);

/** While an answer streams, Stop takes the Ask button's place, so the row keeps its width. */
function setBusy(busy: boolean): void {
  send.disabled = busy;
  send.hidden = busy;
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

/** A new turn with the user's question and an empty answer that streams in. */
function drawQuestion(n: number, content: string, context: SentContext | undefined): HTMLElement {
  const turn = el('section', { class: 'turn', 'data-turn': String(n) });
  const user = el('div', { class: 'user' });
  user.append(el('div', { class: 'who' }, 'You'), el('div', { class: 'content' }, content));
  if (context) {
    const sent = el('details', { class: 'sent' });
    sent.append(el('summary', {}, context.label));
    if (context.text) {
      sent.append(el('pre', {}, context.text));
    }
    user.append(sent);
  }
  const answer = el('div', { class: 'answer streaming' });
  answer.append(el('div', { class: 'who' }, 'reinf'), el('div', { class: 'md' }, '…'));
  turn.append(user, answer);
  log.append(turn);
  return turn;
}

function drawAnswer(n: number, html: string, interactionId: string, meta: string): HTMLElement | null {
  const answer = answerOf(n);
  if (answer) {
    answer.setAttribute('data-interaction', interactionId);
    answer.querySelector('.md')!.innerHTML = html; // rendered by the extension from Markdown with raw HTML escaped
    answer.append(el('div', { class: 'meta' }, meta), ratingWidget(interactionId));
  }
  return answer;
}

window.addEventListener('message', (event: MessageEvent<ToChat>) => {
  const m = event.data;
  switch (m.type) {
    case 'connection':
      connection.textContent = m.connected ? '' : `Not connected. ${m.text}`;
      connection.hidden = m.connected;
      return;
    case 'user':
      log.querySelector('.empty')?.remove();
      drawQuestion(m.turn, m.content, m.context).scrollIntoView({ block: 'end' });
      return;
    case 'delta': {
      const answer = answerOf(m.turn);
      const md = answer?.querySelector('.md');
      if (answer && md) {
        md.innerHTML = m.html; // rendered by the extension from Markdown with raw HTML escaped
        answer.dataset.deltas = String(Number(answer.dataset.deltas ?? 0) + 1);
      }
      return;
    }
    case 'done':
      finish(m.turn, 'done');
      drawAnswer(m.turn, m.html, m.interactionId, m.meta)?.scrollIntoView({ block: 'end' });
      return;
    case 'error':
      finish(m.turn, 'failed')?.append(el('div', { class: 'error', role: 'alert' }, m.message));
      answerOf(m.turn)?.scrollIntoView({ block: 'end' });
      return;
    case 'restore':
      // The thread as it was before the window reloaded; the extension keeps it.
      if (m.turns.length) {
        log.replaceChildren();
        for (const t of m.turns) {
          drawQuestion(t.turn, t.content, t.context);
          finish(t.turn, t.error ? 'failed' : 'done');
          if (t.error) {
            answerOf(t.turn)?.append(el('div', { class: 'error', role: 'alert' }, t.error));
          } else {
            drawAnswer(t.turn, t.html, t.interactionId, t.meta);
          }
        }
        log.lastElementChild?.scrollIntoView({ block: 'end' });
      }
      return;
    case 'rated':
    case 'rateError':
      showRatingReply(m);
      return;
    case 'until':
      showUntil(m.text);
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
