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
 * Thumbs, 1-5 stars and a comment for one interaction. Each change sends the whole rating so far, because
 * the daemon counts the newest explicit rating of an interaction.
 */
export function ratingWidget(interactionId: string): HTMLElement {
  const rating: RatingInput = { interaction_id: interactionId };
  const root = el('div', { class: 'rating', 'data-interaction': interactionId });
  const send = () => post({ type: 'rate', rating: { ...rating } });

  const thumbs = (['up', 'down'] as const).map((t) => {
    const b = el('button', { type: 'button', class: `thumb thumb-${t}`, 'aria-label': `Thumbs ${t}`, 'aria-pressed': 'false' });
    b.textContent = t === 'up' ? '👍' : '👎';
    b.addEventListener('click', () => {
      rating.thumbs = t;
      thumbs.forEach((o) => o.setAttribute('aria-pressed', String(o === b)));
      send();
    });
    return b;
  });

  const stars = el('span', { class: 'stars', role: 'group', 'aria-label': 'Stars' });
  const starButtons = [1, 2, 3, 4, 5].map((n) => {
    const b = el('button', { type: 'button', class: 'star', 'aria-label': `${n} star${n > 1 ? 's' : ''}`, 'data-stars': String(n) }, '☆');
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

  const comment = el('textarea', { class: 'comment', rows: '2', placeholder: 'Comment (optional)', 'aria-label': 'Comment' });
  const sendComment = el('button', { type: 'button', class: 'comment-send secondary' }, 'Send comment');
  sendComment.addEventListener('click', () => {
    const text = comment.value.trim();
    if (text) {
      rating.comment = text;
      send();
    }
  });

  const controls = el('div', { class: 'row' });
  controls.append(...thumbs, stars);
  const status = el('div', { class: 'rate-status', role: 'status' });
  const commentRow = el('div', { class: 'row end' });
  commentRow.append(sendComment);
  root.append(controls, comment, commentRow, status);
  return root;
}

/** Show the daemon's answer to a rating under the widget it came from. */
export function showRatingReply(reply: RatingReply): HTMLElement | undefined {
  const widget = document.querySelector<HTMLElement>(`.rating[data-interaction="${CSS.escape(reply.interactionId)}"]`);
  const status = widget?.querySelector<HTMLElement>('.rate-status');
  if (status) {
    status.textContent = reply.message;
    status.classList.toggle('error', reply.type === 'rateError');
  }
  return widget ?? undefined;
}
