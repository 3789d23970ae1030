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
    const b = el('button', { type: 'button', class: `thumb thumb-${t}`, 'aria-label': `Thumbs ${t}`, title: `Thumbs ${t}`, 'aria-pressed': 'false' });
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
