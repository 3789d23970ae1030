// Shared by the chat panel and the review queue: the VS Code webview API and the rating widget.
import type { RatingInput, RatingReply } from '../messages';

interface VsCodeApi {
  postMessage(message: unknown): void;
}
declare function acquireVsCodeApi(): VsCodeApi;

const api = acquireVsCodeApi();

export function post<M>(message: M): void {
  api.postMessage(message);
}

export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, string> = {},
  text?: string,
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    node.setAttribute(k, v);
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

export function byId<T extends HTMLElement>(id: string): T {
  const node = document.getElementById(id);
  if (!node) {
    throw new Error(`#${id} is missing from the page`);
  }
  return node as T;
}

/**
 * Thumbs and 1-5 stars on one row, and a comment box that opens on demand, for one interaction. Each change
 * sends the whole rating so far, because the daemon counts the newest explicit rating of an interaction.
 */
export function ratingWidget(interactionId: string): HTMLElement {
  const rating: RatingInput = { interaction_id: interactionId };
  const root = el('div', { class: 'rating', 'data-interaction': interactionId });
  const send = () => post({ type: 'rate', rating: { ...rating } });

  const thumbs = (['up', 'down'] as const).map((t) => {
    const label = t === 'up' ? 'Thumbs up: a good answer' : 'Thumbs down: a bad answer';
    const b = el('button', { type: 'button', class: `thumb thumb-${t}`, 'aria-label': label, title: label, 'aria-pressed': 'false' });
    b.append(thumbIcon(t === 'down'));
    b.addEventListener('click', () => {
      rating.thumbs = t;
      thumbs.forEach((o) => o.setAttribute('aria-pressed', String(o === b)));
      send();
    });
    return b;
  });

  const stars = el('span', { class: 'stars', role: 'group', 'aria-label': 'Stars' });
  const starButtons = [1, 2, 3, 4, 5].map((n) => {
    const label = `${n} star${n > 1 ? 's' : ''}`;
    const b = el('button', { type: 'button', class: 'star', 'aria-label': label, title: label, 'data-stars': String(n) }, '☆');
    b.addEventListener('click', () => {
      rating.stars = n;
      starButtons.forEach((o, i) => {
        o.textContent = i < n ? '★' : '☆';
        o.classList.toggle('on', i < n);
      });
      send();
    });
    stars.append(b);
    return b;
  });

  const toggle = el('button', { type: 'button', class: 'comment-toggle', 'aria-expanded': 'false', title: 'Say what was good or wrong' }, 'Comment…');
  const box = el('div', { class: 'comment-box' });
  box.hidden = true;
  const comment = el('textarea', { class: 'comment', rows: '2', placeholder: 'What was good or wrong? (Ctrl+Enter sends)', 'aria-label': 'Comment' });
  const sendComment = el('button', { type: 'button', class: 'comment-send' }, 'Send');
  const cancel = el('button', { type: 'button', class: 'comment-cancel secondary' }, 'Cancel');
  const open = (show: boolean) => {
    box.hidden = !show;
    toggle.setAttribute('aria-expanded', String(show));
    if (show) {
      comment.focus();
    }
  };
  toggle.addEventListener('click', () => open(box.hidden));
  cancel.addEventListener('click', () => open(false));
  const submitComment = () => {
    const text = comment.value.trim();
    if (!text) {
      comment.focus();
      return;
    }
    rating.comment = text;
    send();
    // The box empties only once the daemon has stored it: see showRatingReply.
    root.dataset.pendingComment = text;
  };
  sendComment.addEventListener('click', submitComment);
  comment.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) {
      e.preventDefault();
      submitComment();
    }
  });

  const controls = el('div', { class: 'row' });
  controls.append(...thumbs, el('span', { class: 'sep' }), stars, toggle);
  const actions = el('div', { class: 'row' });
  actions.append(cancel, sendComment);
  box.append(comment, actions);
  const status = el('div', { class: 'rate-status', role: 'status' });
  status.append(el('span', { class: 'saved' }), el('span', { class: 'until' }));
  root.append(controls, box, status);
  return root;
}

const SVG = 'http://www.w3.org/2000/svg';

/** A thumb drawn as SVG: emoji need a font that many Linux machines lack. */
function thumbIcon(down: boolean): SVGSVGElement {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('viewBox', '0 0 16 16');
  svg.setAttribute('width', '16');
  svg.setAttribute('height', '16');
  svg.setAttribute('aria-hidden', 'true');
  const path = document.createElementNS(SVG, 'path');
  path.setAttribute('d', 'M1.5 7h3v7.5h-3zM4.5 7 7.6 1.8c1.3 0 2.2 1 1.8 2.4L8.8 6.2h4.4c.8 0 1.4.7 1.2 1.5l-1.2 5.6c-.2.7-.8 1.2-1.5 1.2H4.5');
  path.setAttribute('fill', 'none');
  path.setAttribute('stroke', 'currentColor');
  path.setAttribute('stroke-width', '1.2');
  path.setAttribute('stroke-linejoin', 'round');
  if (down) {
    path.setAttribute('transform', 'rotate(180 8 8)');
  }
  svg.append(path);
  return svg;
}

/**
 * Show the daemon's answer to a rating under the widget it came from. The count of ratings to go is said
 * under the newest rating only: older ones would show a number that is no longer true.
 */
export function showRatingReply(reply: RatingReply): HTMLElement | undefined {
  const widget = document.querySelector<HTMLElement>(`.rating[data-interaction="${CSS.escape(reply.interactionId)}"]`);
  const status = widget?.querySelector<HTMLElement>('.rate-status');
  if (!widget || !status) {
    return undefined;
  }
  const saved = status.querySelector<HTMLElement>('.saved')!;
  const until = status.querySelector<HTMLElement>('.until')!;
  status.classList.toggle('error', reply.type === 'rateError');
  if (reply.type === 'rateError') {
    saved.textContent = `Not saved: ${reply.message}`;
    until.textContent = '';
    return widget;
  }
  for (const other of document.querySelectorAll<HTMLElement>('.rate-status .until')) {
    other.textContent = '';
  }
  saved.textContent = reply.saved;
  until.textContent = reply.until ? ` ${reply.until}` : '';
  widget.dataset.saves = String(Number(widget.dataset.saves ?? 0) + 1);
  // Restart the flash: the same words again must still be seen to be new.
  status.classList.remove('fresh');
  void status.offsetWidth;
  status.classList.add('fresh');
  const pending = widget.dataset.pendingComment;
  const box = widget.querySelector<HTMLElement>('.comment-box');
  const comment = widget.querySelector<HTMLTextAreaElement>('.comment');
  if (pending !== undefined && box && comment) {
    delete widget.dataset.pendingComment;
    if (comment.value.trim() === pending) {
      comment.value = '';
      box.hidden = true;
      widget.querySelector('.comment-toggle')?.setAttribute('aria-expanded', 'false');
    }
  }
  return widget;
}

/** A new count of ratings to go, from elsewhere (another panel, a training run): it replaces the one shown. */
export function showUntil(text: string): void {
  for (const until of document.querySelectorAll<HTMLElement>('.rate-status .until')) {
    if (until.textContent) {
      until.textContent = ` ${text}`;
    }
  }
}
