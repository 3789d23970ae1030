// The review queue's page: unrated interactions, each with the rating widget.
import type { FromReview, ReviewEntry, ToReview } from '../messages';
import { byId, el, post, ratingWidget, showRatingReply, showUntil } from './common';

const items = byId<HTMLDivElement>('items');
const count = byId<HTMLSpanElement>('count');
const more = byId<HTMLButtonElement>('more');
const error = byId<HTMLDivElement>('error');

const say = (m: FromReview) => post(m);

byId('refresh').addEventListener('click', () => say({ type: 'refresh' }));
more.addEventListener('click', () => say({ type: 'more', offset: items.children.length }));

function entry(e: ReviewEntry): HTMLElement {
  const node = el('article', { class: 'item', 'data-interaction': e.interactionId });
  node.append(el('div', { class: 'muted', title: e.ts }, [e.kind, e.when, e.where].filter(Boolean).join(' · ')));
  const prompt = el('details', { class: 'prompt' });
  prompt.append(el('summary', {}, 'Prompt'), el('pre', {}, e.prompt));
  node.append(prompt, el('pre', { class: 'response' }, e.response), ratingWidget(e.interactionId));
  return node;
}

window.addEventListener('message', (event: MessageEvent<ToReview>) => {
  const m = event.data;
  switch (m.type) {
    case 'items':
      error.hidden = true;
      if (!m.append) {
        items.replaceChildren();
      }
      items.append(...m.items.map(entry));
      count.textContent = `${m.total} unrated`;
      more.hidden = items.children.length >= m.total;
      if (m.total === 0) {
        items.append(el('p', { class: 'empty' }, 'Nothing to review: every interaction has a rating.'));
      }
      return;
    case 'error':
      error.textContent = m.message;
      error.hidden = false;
      return;
    case 'rated':
    case 'rateError':
      showRatingReply(m)?.closest('.item')?.classList.toggle('rated', m.type === 'rated');
      return;
    case 'until':
      showUntil(m.text);
      return;
  }
});

say({ type: 'ready' });
